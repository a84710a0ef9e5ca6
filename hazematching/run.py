"""A run directory: ``model.safetensors`` (EMA weights) + ``config.json``, no pickles anywhere.

``load_model(run_dir)`` is the one call that predictors and exporters use to get a ready network.
"""

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hazematching.version import __version__
from hazematching.core import UNet
from hazematching.data.normalization import Normalization

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class RunError(ValueError):
    """A run directory that cannot be used: missing files, wrong kind or version."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_permissions(fd_or_path) -> None:
    """mkstemp makes owner-only files; give them the permissions a plain ``open`` would."""
    os.chmod(fd_or_path, 0o666 & ~_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _usual_permissions(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata=metadata)
        _usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def versions() -> dict:
    import accelerate

    return {
        "hazematching": __version__,
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def architecture_kwargs(model_config, objective: str) -> dict:
    """UNet(**kwargs) for a ModelConfig; the point predictor has no time conditioning."""
    return {
        "in_channels": 1,
        "cond_channels": 1,
        "out_channels": 1,
        "base_channels": model_config.base_channels,
        "channel_mults": list(model_config.channel_mults),
        "num_res_blocks": model_config.num_res_blocks,
        "attention_levels": list(model_config.attention_levels),
        "norm": model_config.norm,
        "dropout": model_config.dropout,
        "time_conditioning": objective == "cfm",
    }


def save_run(run_dir: Path, state: dict[str, torch.Tensor], config: dict) -> None:
    """Weights first, then config: a config.json always describes weights that are complete."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(state, run_dir / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_bytes(run_dir / CONFIG_NAME, json.dumps(config, indent=2, default=str).encode())


@dataclass
class LoadedRun:
    model: UNet
    normalization: Normalization
    config: dict
    # networks prepared for fast inference, by (device, compile, precision): compiled once per process
    fast: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def objective(self) -> str:
        return self.config["objective"]


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Build the network of a run and load its EMA weights (safetensors only), in eval mode."""
    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / CONFIG_NAME, run_dir / WEIGHTS_NAME
    if not config_path.is_file():
        raise RunError(f"{run_dir}: no {CONFIG_NAME}; is this a HazeMatching run directory?")
    if not weights_path.is_file():
        raise RunError(f"{run_dir}: no {WEIGHTS_NAME}; training did not finish or write a checkpoint yet")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{config_path}: not valid JSON ({exc})") from exc
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise RunError(
            f"{config_path}: run format version {version!r}, this hazematching {__version__} reads version "
            f"{FORMAT_VERSION}; use a matching hazematching release"
        )
    model = UNet(**config["architecture"])
    model.load_state_dict(load_file(weights_path, device="cpu"))
    model.to(device).eval()
    return LoadedRun(model, Normalization(**config["normalization"]), config)

"""A run directory: ``model.safetensors`` (EMA weights) + ``config.json``, no pickles anywhere.

``config.json`` is a ``RunDescription`` (typed, validated when read); ``load_model(run_dir)`` is the
one call that predictors and exporters use to get a ready network and its description.
"""

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from hazematching.architecture import Architecture
from hazematching.config import SamplerConfig, TrainConfig
from hazematching.core import SOLVERS
from hazematching.core.sampler import MMSE_ESTIMATES
from hazematching.data.normalization import Normalization
from hazematching.version import __version__

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


class NormalizationStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_mean: float
    input_std: float
    target_mean: float
    target_std: float


CALIBRATION_BINS = 15  # std bins of the RMSE/RMV curves (``hazematching calibrate --bins``)


class Calibration(BaseModel):
    """Written by ``hazematching calibrate``: the calibrated std is ``max(scale * std + offset, 0)``
    (a fitted offset can be negative; a std cannot)."""

    model_config = ConfigDict(extra="allow")

    scale: float
    offset: float
    bins: int = CALIBRATION_BINS
    fit_data: str | None = None
    plot_data: str | None = None
    settings: dict = {}
    mean_abs_deviation_before: float | None = None
    mean_abs_deviation_after: float | None = None

    # The spread of K samples after N solver steps depends on all three, so a fit holds only for them.
    # The MMSE's error depends on how it is made (``mmse``; fits of earlier releases do not record it).
    TIED_TO: ClassVar[tuple[str, ...]] = ("samples", "steps", "solver", "mmse", "sample_noise")

    def _differing(self, settings) -> tuple[dict, dict] | None:
        """The fit's and ``settings``'s values of ``TIED_TO`` where they differ (mmse and sample noise
        only where they do), or None."""
        recorded = {"sample_noise": "independent", **self.settings}  # fits before it existed: independent
        fitted = {key: recorded[key] for key in self.TIED_TO if recorded.get(key) is not None}
        used = {key: getattr(settings, key) for key in fitted}
        if fitted == used:
            return None
        for key in ("mmse", "sample_noise"):
            if key in fitted and fitted[key] == used[key]:
                del fitted[key], used[key]
        return fitted, used

    def differences(self, settings) -> tuple[str, str] | None:
        """(the fit's settings, ``settings``'s) as "K = 4, N = 2, ..." where they differ, or None."""
        differ = self._differing(settings)
        return None if differ is None else (_describe(differ[0]), _describe(differ[1]))

    def mismatch(self, settings, model: str = "RUN") -> str | None:
        """Why this fit may not hold for ``settings`` (anything with samples/steps/solver), or None; the
        refit command names ``model`` and the data of this fit."""
        if (differ := self._differing(settings)) is None:
            return None
        fitted, used = differ
        flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in used.items())
        return (
            f"the std calibration was fitted with {_describe(fitted)} but these predictions use {_describe(used)}, "
            "so the calibrated std may be off; refit it for these settings with "
            f"`hazematching calibrate --model {model} --data {self.fit_data or 'VAL_DIR'} {flags}`"
        )


def _describe(settings: dict) -> str:
    names = {"samples": "K", "steps": "N", "sample_noise": "sample noise"}
    return ", ".join(f"{names.get(key, key)} = {value}" for key, value in settings.items())


class SamplerRecommendation(BaseModel):
    """Written by ``hazematching tune``: the fewest network evaluations per sample whose samples (FSIM,
    GMSD) and, where the MMSE is their mean, whose MMSE stay within the stated tolerances of the
    reference (Euler, 20 steps) at the same K on held-out pairs."""

    model_config = ConfigDict(extra="allow")

    solver: Literal[SOLVERS]
    steps: int = Field(ge=1)
    samples: int = Field(ge=1, description="K the comparison was made at")
    psnr_delta: float = Field(description="MMSE PSNR minus the reference's, dB")
    ms3im_delta: float | None = Field(
        description="MMSE MicroMS3IM minus the reference's (None: images too small for MicroMS3IM)"
    )
    ms_ssim_delta: float | None = Field(None, description="MMSE MS-SSIM minus the reference's")
    speedup: float = Field(description="network evaluations of the reference / of this setting")
    reference: str | None = Field(
        None, description="the reference setting, solver:steps (None: euler:20, as before it was recorded)"
    )
    data: str = ""
    seed: int = 0
    mmse: Literal[MMSE_ESTIMATES] | None = Field(
        None, description="the MMSE estimate recommended beside the samples' setting (None: tuned before it was)"
    )
    mmse_psnr_delta: float | None = Field(None, description="the anchor MMSE's PSNR minus the reference's, dB")
    mmse_absolute_psnr_delta: float | None = Field(
        None, description="the same without the affine fit (the intensities as they are), dB"
    )
    sample_fsim_delta: float | None = Field(None, description="one sample's FSIM minus the reference's")
    sample_gmsd_delta: float | None = Field(None, description="one sample's GMSD minus the reference's (lower: better)")

    def reference_steps(self) -> tuple[str, int]:
        """(solver, steps) the setting was compared with."""
        solver, _, steps = (self.reference or "euler:20").partition(":")
        return solver, int(steps)

    def structure_text(self) -> str:
        """The structural change the rule checked, as the CLI and the package README state it."""
        if self.ms3im_delta is not None:
            text = f"{self.ms3im_delta:+.3f} MicroMS3IM"
        else:
            text = f"{self.ms_ssim_delta:+.3f} MS-SSIM (the images were too small for MicroMS3IM)"
        if self.sample_fsim_delta is not None:
            text += f"; one sample: {self.sample_fsim_delta:+.3f} FSIM, {self.sample_gmsd_delta:+.3f} GMSD"
        return text


class ImportedCheckpoint(BaseModel):
    """Where an imported run's weights came from (``hazematching reference import``)."""

    file: str = Field(description="the checkpoint as given, absolute path")
    sha256: str
    release: str | None = Field(None, description="the paper's data set it was trained on (statistics, tile size)")
    verified: bool = Field(False, description="the file is that data set's released checkpoint (its sha256 matched)")
    source_channel: str | None = Field(None, description="zebrafish: the ch0/ch1/ch2 statistics chosen")
    url: str | None = None


class SettingChange(BaseModel):
    """Training settings changed when a run was resumed: ``changes`` maps a ``TrainConfig`` field to
    (before, after), in effect from ``step`` on. ``rewound_from_step``: the run had reached that step
    and went back to ``step`` (its state then is kept in ``superseded/``)."""

    step: int
    changes: dict[str, tuple[Any, Any]]
    rewound_from_step: int | None = None


class RunDescription(BaseModel):
    """A run's ``config.json``: what was trained, how, and what the sampler defaults to."""

    model_config = ConfigDict(extra="allow")  # fields of newer minor releases are kept, not lost

    format_version: int
    objective: Literal["cfm", "mse"]
    architecture: Architecture
    normalization: NormalizationStats
    sampler: SamplerConfig
    training: TrainConfig
    step: int
    num_processes: int = 1
    mixed_precision: str | None = None
    compiled: bool = False
    versions: dict[str, str] = {}
    rank_weight_checksums: list[float] | None = None
    calibration: Calibration | None = None
    recommended_sampler: SamplerRecommendation | None = None
    setting_changes: list[SettingChange] | None = None  # every resume that changed a training setting
    imported: ImportedCheckpoint | None = None  # weights trained elsewhere (the paper's released checkpoints)

    def to_json(self) -> bytes:
        data = self.model_dump(mode="json")
        for key in (
            "rank_weight_checksums",
            "calibration",
            "recommended_sampler",
            "setting_changes",
            "imported",
        ):  # absent, not null, until they exist
            if data.get(key) is None:
                data.pop(key, None)
        for change in data.get("setting_changes", []):
            if change["rewound_from_step"] is None:
                del change["rewound_from_step"]
        return json.dumps(data, indent=2).encode()


def save_run(run_dir: Path, state: dict[str, torch.Tensor], description: RunDescription) -> None:
    """Weights first, then config: a config.json always describes weights that are complete."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(state, run_dir / WEIGHTS_NAME, metadata={"format": "pt"})
    write_description(run_dir, description)


def write_description(run_dir: Path, description: RunDescription) -> None:
    atomic_write_bytes(Path(run_dir) / CONFIG_NAME, description.to_json())


def read_description(run_dir: Path) -> RunDescription:
    """The run's config.json, validated, with a message that names the file and what is wrong."""
    config_path = Path(run_dir) / CONFIG_NAME
    if not config_path.is_file():
        raise RunError(f"{run_dir}: no {CONFIG_NAME}; is this a HazeMatching run directory?")
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{config_path}: not valid JSON ({exc})") from exc
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise RunError(
            f"{config_path}: run format version {version!r}, this hazematching {__version__} reads version "
            f"{FORMAT_VERSION}; use a matching hazematching release"
        )
    try:
        return RunDescription.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RunError(f"{config_path}: not a valid run description ({problems})") from exc


@dataclass
class LoadedRun:
    model: nn.Module
    normalization: Normalization
    config: RunDescription
    path: Path | None = None  # the run directory it was loaded from
    # networks prepared for fast inference, by (device, compile, precision): compiled once per process
    fast: dict = field(default_factory=dict, repr=False, compare=False)
    _radius: list = field(default_factory=list, repr=False, compare=False)

    @property
    def objective(self) -> str:
        return self.config.objective

    def receptive_radius(self) -> int | None:
        """``core.networks.receptive_radius`` of the network, probed once (seconds for the default U-Net)."""
        if not self._radius:
            from hazematching.core.networks import receptive_radius

            self._radius.append(receptive_radius(self.model))
        return self._radius[0]


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Build the network of a run and load its EMA weights (safetensors only), in eval mode."""
    run_dir = Path(run_dir)
    description = read_description(run_dir)
    weights_path = run_dir / WEIGHTS_NAME
    if not weights_path.is_file():
        raise RunError(f"{run_dir}: no {WEIGHTS_NAME}; training did not finish or write a checkpoint yet")
    model = description.architecture.build()
    model.load_state_dict(load_file(weights_path, device="cpu"))
    model.to(device).eval()
    return LoadedRun(model, Normalization(**description.normalization.model_dump()), description, run_dir)

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory) -> Path:
    """A small microsim data set shared by the training tests (12 pairs of 128 x 128), committed in
    tests/assets/sim so that tests run without microsim; copied so that no test writes into the repo."""
    out = tmp_path_factory.mktemp("sim") / "data"
    shutil.copytree(REPO / "tests" / "assets" / "sim", out, ignore=shutil.ignore_patterns("*.md"))
    return out


def write_pair(path: Path, shape=(64, 64), dtype=np.uint16, seed=0) -> Path:
    """A 2-channel TIFF in the paper's layout (channel 0 target, channel 1 input)."""
    rng = np.random.default_rng(seed)
    data = (rng.random((2, *shape)) * 1000).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data)
    return path


def run_trainer(
    args: list[str], launcher: list[str] | None = None, timeout: int = 600, **kwargs
) -> subprocess.CompletedProcess:
    """Run trainer/train.py in a subprocess (optionally under `accelerate launch`)."""
    cmd = (launcher or [sys.executable]) + [str(REPO / "trainer" / "train.py"), *args]
    env = kwargs.pop("env", None) or {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cwd = kwargs.pop("cwd", REPO)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, **kwargs)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in descendants(c)]


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process it started (torchrun's workers run in their own sessions),
    then wait until none of them runs any more."""
    pids = [pid, *descendants(pid)]
    for p in pids:
        os.kill(p, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline:
        states = []
        for p in pids[1:]:
            try:
                states.append(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
        if all(state == "Z" for state in states):
            return
        time.sleep(0.05)


def accelerate_launcher(config: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs" / config),
        *extra,
    ]


def _train_once(tmp_path_factory, name: str, data: Path, *flags: str) -> Path:
    """One session-wide run on both cores (no test compares these weights across thread counts)."""
    out = tmp_path_factory.mktemp(name) / "run"
    result = run_trainer(
        [
            "--data",
            str(data),
            "--output-dir",
            str(out),
            "--batch-size",
            "4",
            "--crop-size",
            "64",
            "--lr",
            "5e-4",
            *flags,
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


TRAINED_RUN_FLAGS = ["--max-steps", "200", "--batch-size", "8", "--checkpointing-steps", "200"]
TRAINED_RUN_FLAGS += ["--validation-steps", "200", "--sampler-steps", "4", "--sampler-samples", "4", "--seed", "1"]


@pytest.fixture(scope="session")
def trained_run(sim_data, tmp_path_factory) -> Path:
    """A HazeMatching run trained briefly on the simulated data (default architecture), validated at
    its first and last step: long enough to dehaze (tests/training/test_train.py checks that it learnt)."""
    return _train_once(tmp_path_factory, "trained", sim_data, *TRAINED_RUN_FLAGS)


@pytest.fixture(scope="session")
def shortcut_run(sim_data, trained_run, tmp_path_factory) -> Path:
    """``trained_run`` fine-tuned briefly as a shortcut model (step-size conditioning)."""
    return _train_once(
        tmp_path_factory,
        "shortcut",
        sim_data,
        "--init-from",
        str(trained_run),
        "--shortcut-fraction",
        "0.25",
        "--max-steps",
        "20",
        "--checkpointing-steps",
        "10",
        "--validation-steps",
        "0",
        "--sampler-solver",
        "shortcut",
        "--sampler-steps",
        "2",
        "--sampler-samples",
        "4",
    )


@pytest.fixture(scope="session")
def baseline_run(sim_data, tmp_path_factory) -> Path:
    """The U-Net point-predictor baseline, same backbone, trained briefly."""
    return _train_once(
        tmp_path_factory,
        "baseline",
        sim_data,
        "--max-steps",
        "60",
        "--checkpointing-steps",
        "60",
        "--validation-steps",
        "60",
        "--objective",
        "mse",
    )


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root without permission to mount a read-only file system")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


# checkpoints of the paper's network (tests/paper): torchcfm 1.0.7's UNetModel, the class the released
# files were saved from, with perturbed weights, saved as their train.py saves them
#
# the released configurations: patch size P -> channel_mult; attention at ds = P // 16
REFERENCE_CONFIGS = {128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


def torchcfm_unet(patch: int) -> torch.nn.Module:
    """The paper's ``CCFMUNet(dim=(2, P, P), num_channels=32, out_channels=1, num_res_blocks=1)`` as the
    torchcfm network it builds (as in tests/core/test_reference_unet.py; a stub stands in for POT)."""
    sys.modules.setdefault("ot", types.ModuleType("ot"))
    from torchcfm.models.unet.unet import UNetModel

    return UNetModel(
        image_size=patch,
        in_channels=2,
        model_channels=32,
        out_channels=1,
        num_res_blocks=1,
        attention_resolutions=(patch // 16,),
        channel_mult=REFERENCE_CONFIGS[patch],
        num_heads=1,
    ).eval()


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make the zero-initialised layers active, so every weight matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


@pytest.fixture(scope="session")
def neuron_like(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """(torchcfm P = 64 network with perturbed weights, its state dict saved with torch.save): a file of
    the Neuron release's layout that is not the released file (its sha256 is unknown)."""
    torch.manual_seed(0)
    model = perturb(torchcfm_unet(64))
    path = tmp_path_factory.mktemp("neuron_like") / "best_model.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="session")
def neuron_run(neuron_like, tmp_path_factory) -> Path:
    """``neuron_like`` imported with ``--dataset neuron``."""
    from hazematching.cli import main as cli_main

    out = tmp_path_factory.mktemp("neuron_run") / "run"
    cli_main(["reference", "import", str(neuron_like[1]), "--output", str(out), "--dataset", "neuron"])
    return out

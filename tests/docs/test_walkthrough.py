"""The Quickstart and the Share page, run as a user runs them, on tiny settings: the commands come
from the Markdown itself, so a page whose commands stop working fails here."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile
from conftest import free_port
from guide import REPO, commands

from hazematching.cli import main as cli_main

# Tiny values for the flags that decide how long a command runs; everything else is as written.
TINY = {
    "--max-steps": "4",
    "--checkpointing-steps": "2",
    "--validation-steps": "2",
    "--batch-size": "2",
    "--samples": "2",
    "--steps": "2",
    "--sampler-steps": "2",
}
INSTALL = ("pip", "python3", ".")  # the pages' install lines: this environment is already installed


def tiny(argv: list[str]) -> list[str]:
    return [TINY.get(argv[i - 1], word) if i else word for i, word in enumerate(argv)]


def run_page(page: str, data: Path, workdir: Path, run: Path | None = None) -> list[list[str]]:
    """Runs the page's commands in ``workdir``; ``hazematching simulate`` copies ``data`` (pairs made by
    it, committed in tests/assets/sim) instead of needing microsim. Returns the commands run."""
    ran = []
    for argv in commands(REPO / "docs" / page):
        if argv[0] in INSTALL:
            continue
        argv = tiny(argv)
        ran.append(argv)
        if argv[:2] == ["hazematching", "simulate"]:
            shutil.copytree(data, workdir / argv[argv.index("--out") + 1])
        elif argv[0] == "hazematching":
            cli_main(argv[1:])
        elif argv[:2] == ["accelerate", "launch"]:
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", free_port()]
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
            args = [str(REPO / a) if a.startswith(("accelerate_configs/", "trainer/")) else a for a in argv[2:]]
            done = subprocess.run(launch + args, capture_output=True, text=True, timeout=600, env=env)
            assert done.returncode == 0, done.stderr[-3000:]
        elif argv[0] == "bioimageio":
            done = subprocess.run(
                [str(Path(sys.executable).parent / "bioimageio"), *argv[1:]],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        else:
            raise AssertionError(f"{page}: no way to run {' '.join(argv)}")
    return ran


def test_quickstart_runs_end_to_end(sim_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = run_page("quickstart.md", sim_data, tmp_path)
    assert [a[:2] for a in ran][-1] == ["bioimageio", "test"] and len(ran) == 6
    run = tmp_path / "demo" / "run"
    assert (run / "model.safetensors").is_file() and list((run / "samples").glob("step-*.png"))
    names = sorted(p.name for p in (sim_data / "test").glob("*.tif"))
    assert sorted(p.name for p in (tmp_path / "demo" / "predictions").glob("sim_*.tif")) == sorted(
        names + [n.replace(".tif", "_std.tif") for n in names]
    )
    assert (run / "evaluation" / "metrics.json").is_file()
    with zipfile.ZipFile(tmp_path / "demo" / "model.zip") as package:
        assert "| HazeMatching MMSE |" in package.read("README.md").decode()


def test_share_page_gives_a_package_with_the_evaluation_table(trained_run, sim_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained_run, tmp_path / "demo" / "run")
    shutil.copytree(sim_data, tmp_path / "demo" / "data")
    first = tifffile.imread(sorted((sim_data / "test").glob("*.tif"))[0])
    tifffile.imwrite(tmp_path / "widefield.tif", first[1])  # "any single-channel widefield image"
    ran = run_page("share.md", sim_data, tmp_path)
    assert [a[:2] for a in ran] == [
        ["hazematching", "evaluate"],
        ["hazematching", "export"],
        ["bioimageio", "test"],
        ["bioimageio", "predict"],
    ]
    metrics = json.loads((tmp_path / "demo" / "run" / "evaluation" / "metrics.json").read_text())
    with zipfile.ZipFile(tmp_path / "demo" / "model.zip") as package:
        readme = package.read("README.md").decode()
    assert "| HazeMatching MMSE |" in readme and f"{metrics['images']} held-out image(s)" in readme
    psnr = metrics["mean"]["HazeMatching MMSE"]["psnr"]
    assert f"{psnr:.4f}" in readme  # the measured number, not only the table's header
    dehazed = tifffile.imread(tmp_path / "out" / "dehazed.tif")
    assert dehazed.squeeze().shape == (2, *first[1].shape) and np.isfinite(dehazed).all()

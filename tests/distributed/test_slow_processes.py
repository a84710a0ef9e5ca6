"""Several processes writing one checkpoint or one experiment, with process 1 made slow at each write.

Each launch runs the shipped accelerate config with process 1 delayed by ``slow_rank.py`` (monkey-
patched in the launched child, nothing shipped). Before issue 26, every training case here died at its
first checkpoint: the main process published (renamed) the checkpoint folder while process 1 was still
writing ``random_states_1.pkl`` (or its ZeRO optimizer shard) into it.

Overrides of the shipped configs, and why: ``--num_processes 2`` (the GPU configs say 8; this machine
has 2 cores and no GPU). Mixed precision stays as shipped (bf16 for DeepSpeed).
"""

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import REPO, accelerate_launcher, free_port, kill_tree

from hazematching.inference.experiment import MANIFEST_NAME, predict_experiment
from hazematching.training import checkpoints

pytestmark = pytest.mark.slow
SLOW_RANK = str(Path(__file__).with_name("slow_rank.py"))
SMALL = ["--crop-size", "64", "--base-channels", "8", "--channel-mults", "1,2", "--validation-steps", "0"]


def slow_env(log: Path, points: str, delay: float) -> dict:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "SLOW_RANK": "1",
        "SLOW_POINTS": points,
        "SLOW_DELAY": str(delay),
        "SLOW_LOG": str(log),
    }


def launch(config: str, args: list[str], env: dict, **kwargs):
    launcher = accelerate_launcher(config, "--num_processes", "2", "--main_process_port", free_port())
    return subprocess.Popen(
        [*launcher, SLOW_RANK, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
        **kwargs,
    )


def finish(proc: subprocess.Popen, timeout: int = 600) -> str:
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, out[-4000:]
    return out


def delays(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def assert_complete(checkpoint: Path, processes: int = 2) -> None:
    assert (checkpoint / checkpoints.COMPLETE_MARKER).is_file(), checkpoint
    assert checkpoints.missing_process_files(checkpoint, processes) == [], checkpoint
    assert json.loads((checkpoint / checkpoints.COMPLETE_MARKER).read_text())["num_processes"] == processes


@pytest.mark.parametrize("config", ["cpu_2proc.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_slow_process_at_every_checkpoint_write(sim_data, tmp_path, config):
    """Process 1 sleeps before every torch.save (its RNG state; under ZeRO also its optimizer shard):
    the run finishes, rotation keeps the newest two, each checkpoint holds both processes' files, and
    ``latest`` resumes (slow again) on both processes."""
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    run, log = tmp_path / "run", tmp_path / "delays.log"
    common = ["trainer/train.py", "--data", str(sim_data), "--output-dir", str(run), "--batch-size", "2", *SMALL]
    common += ["--checkpointing-steps", "2", "--checkpoints-total-limit", "2"]
    env = slow_env(log, "torch:save", 2)
    finish(launch(config, [*common, "--max-steps", "6"], env))
    assert len(delays(log)) >= 3 and all(line.startswith("1 ") for line in delays(log))  # the delay hit, on rank 1
    kept = checkpoints.list_checkpoints(run / "checkpoints")
    assert [p.name for p in kept] == ["checkpoint-4", "checkpoint-6"]
    for checkpoint in kept:
        assert_complete(checkpoint)
    assert not list((run / "checkpoints").glob(".tmp-*"))

    out = finish(launch(config, [*common, "--max-steps", "8", "--resume-from-checkpoint", "latest"], env))
    assert "at step 6" in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["step"] == 8 and saved["num_processes"] == 2
    assert saved["rank_weight_checksums"][0] == saved["rank_weight_checksums"][1]
    assert_complete(run / "checkpoints" / "checkpoint-8")


def test_kill_while_a_slow_process_writes_keeps_the_previous_checkpoint(sim_data, tmp_path):
    """Killed (every process) while process 1 is still writing checkpoint 4: checkpoint 2 stays the
    newest complete one, nothing half written is visible, and ``latest`` resumes from it."""
    run, log = tmp_path / "run", tmp_path / "delays.log"
    common = ["trainer/train.py", "--data", str(sim_data), "--output-dir", str(run), "--batch-size", "2", *SMALL]
    common += ["--checkpointing-steps", "2"]
    proc = launch("cpu_2proc.yaml", [*common, "--max-steps", "6"], slow_env(log, "torch:save", 6))
    deadline = time.time() + 300
    while len(delays(log)) < 2:  # process 1 has started writing the second checkpoint
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(1)
    kill_tree(proc.pid)
    proc.communicate()
    assert (run / "checkpoints" / ".tmp-checkpoint-4").is_dir()  # killed mid-write
    assert [p.name for p in checkpoints.list_checkpoints(run / "checkpoints")] == ["checkpoint-2"]
    assert_complete(run / "checkpoints" / "checkpoint-2")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = finish(launch("cpu_2proc.yaml", [*common, "--max-steps", "4", "--resume-from-checkpoint", "latest"], env))
    assert "at step 2" in out
    assert [p.name for p in checkpoints.list_checkpoints(run / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_every_process_resumes_the_checkpoint_process_0_found(sim_data, tmp_path):
    """Process 1's view of the checkpoint folder lags (it does not list the newest checkpoint): it still
    resumes the one process 0 found, so both continue from the same step and train one model."""
    run, log = tmp_path / "run", tmp_path / "delays.log"
    common = ["trainer/train.py", "--data", str(sim_data), "--output-dir", str(run), "--batch-size", "2", *SMALL]
    common += ["--checkpointing-steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finish(launch("cpu_2proc.yaml", [*common, "--max-steps", "4"], env))
    out = finish(
        launch(
            "cpu_2proc.yaml",
            [*common, "--max-steps", "6", "--resume-from-checkpoint", "latest"],
            slow_env(log, "stale-listing", 0),
        )
    )
    assert delays(log) == ["1 stale-listing"] and "at step 4" in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["step"] == 6 and saved["rank_weight_checksums"][0] == saved["rank_weight_checksums"][1]


def test_experiment_with_a_slow_process_writes_what_one_process_writes(trained_run, sim_data, tmp_path):
    """The experiment runner with process 1 slow when it syncs planes, writes its plane log (in two
    halves, as a slow shared file system may show it) and reports its end: the outputs, manifest and
    work folder end exactly as with one process."""
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    for name, planes in (("a.tif", 12), ("b.tif", 3)):
        tifffile.imwrite(
            src / name,
            (rng.random((planes, 32, 32)) * 1000).astype(np.uint16),
            photometric="minisblack",
            metadata={"axes": "ZYX"},
        )
    options = dict(samples=2, steps=2, seed=3)
    one = predict_experiment(trained_run, src, tmp_path / "one", progress=False, **options)
    assert sorted(one["complete"]) == ["a.tif", "b.tif"]

    log = tmp_path / "delays.log"
    points = (
        "hazematching.data.stack:PlaneWriter.sync,torn-log,hazematching.inference.experiment.runner:atomic_write_bytes"
    )
    args = ["-m", "hazematching", "predict", "--model", str(trained_run), "--input", str(src)]
    args += ["--output", str(tmp_path / "two"), "--quiet", "--samples", "2", "--steps", "2", "--seed", "3"]
    finish(launch("cpu_2proc.yaml", args, slow_env(log, points, 0.5)))
    hit = {line.split()[1] for line in delays(log)}
    assert hit == set(points.split(",")), hit
    manifest = json.loads((tmp_path / "two" / MANIFEST_NAME).read_text())
    assert {k: v["status"] for k, v in manifest["files"].items()} == {"a.tif": "complete", "b.tif": "complete"}
    assert not (tmp_path / "two" / ".hazematching-work").exists()
    for name in ("a.tif", "a_std.tif", "b.tif", "b_std.tif"):
        np.testing.assert_allclose(
            tifffile.imread(tmp_path / "two" / name), tifffile.imread(tmp_path / "one" / name), rtol=1e-5, atol=1e-3
        )


def test_runner_output_not_shared_between_processes_is_refused(trained_run, tmp_path):
    """Process 1 in another working directory with a relative --output (a folder process 0 cannot see, as
    on a node whose disk is not shared): both processes stop with one line naming the folder, instead
    of process 0 waiting forever for plane logs that land elsewhere."""
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", np.ones((2, 32, 32), np.uint16), photometric="minisblack", metadata={"axes": "ZYX"})
    node1 = tmp_path / "node1"
    node1.mkdir()
    child = tmp_path / "child.py"
    child.write_text(
        "import os, runpy, sys\n"
        f"if os.environ.get('RANK') == '1': os.chdir({str(node1)!r})\n"
        f"sys.argv = ['hazematching', 'predict', '--model', {str(trained_run)!r}, '--input', {str(src)!r},"
        " '--output', 'out', '--quiet', '--samples', '2', '--steps', '2']\n"
        "runpy.run_module('hazematching', run_name='__main__', alter_sys=True)\n"
    )
    launcher = accelerate_launcher("cpu_2proc.yaml", "--main_process_port", free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, str(child)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode != 0
    assert "not shared between the processes: process(es) [1]" in proc.stderr, proc.stderr[-3000:]
    assert not list((tmp_path / "out").glob("*.tif"))

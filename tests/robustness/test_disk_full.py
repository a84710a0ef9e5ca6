"""Robustness case 9 (../shared/robustness): a stack dehazed into a file system that fills up, then
freed and relaunched. One line names the full folder; the relaunch computes only the planes not yet
done (a failure logged by an earlier launch is computed again, not replayed) and the result equals an
uninterrupted run."""

import json
import subprocess

import numpy as np
import pytest
import tifffile
from conftest import run_trainer

from hazematching.cli import main as cli_main
from hazematching.data.io import read_split
from hazematching.inference.experiment import MANIFEST_NAME, WORK_NAME

pytestmark = pytest.mark.slow
FLAGS = ["--samples", "2", "--steps", "2", "--quiet"]


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs (root may mount; otherwise the test is skipped)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs permission to mount a small tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_is_one_line_and_the_relaunch_continues(trained_run, sim_data, tmp_path, small_disk, capsys):
    images = [p.input for p in read_split(sim_data / "train")]
    stack = np.stack([img[:96, :96] for img in images[:8]] * 3).astype(np.uint16)  # 24 planes of 96 x 96
    tifffile.imwrite(tmp_path / "zyx_24.tif", stack, imagej=True, metadata={"axes": "ZYX", "spacing": 0.4})
    args = ["predict", "--model", str(trained_run), "--input", str(tmp_path / "zyx_24.tif"), *FLAGS]

    with pytest.raises(SystemExit) as stopped:
        cli_main([*args, "--output", str(small_disk / "out.tif")])
    assert stopped.value.code == (  # printed as the one line, exit status 1
        f"error: the output folder {small_disk} is full (No space left on device): free space (or choose another "
        "--output) and relaunch the same command; the planes finished so far are kept and not computed again"
    )
    assert not (small_disk / "out.tif").exists()  # nothing partial under a final name
    log = small_disk / WORK_NAME / "out.tif" / "rank0.log"
    done = [line for line in log.read_text().splitlines() if line.startswith("done ")]
    assert 0 < len(done) < 24
    with open(log, "a") as f:  # a plane an earlier launch reported failed is computed again, not replayed
        f.write("fail 23 an earlier failure\n")

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    cli_main([*args, "--output", str(small_disk / "out.tif")])
    summary = capsys.readouterr().out
    assert f"{24 - len(done)} plane(s)" in summary and "0 failed" in summary, summary
    assert not (small_disk / WORK_NAME).exists() and (small_disk / MANIFEST_NAME).is_file()

    cli_main([*args, "--output", str(tmp_path / "reference" / "out.tif")])
    for name in ("out.tif", "out_std.tif"):
        np.testing.assert_array_equal(
            tifffile.imread(small_disk / name), tifffile.imread(tmp_path / "reference" / name)
        )


def test_training_into_a_full_disk_is_one_line_and_a_relaunch_starts_clean(sim_data, small_disk):
    """The trainer's checkpoint on a full disk: one line naming the checkpoint folder, exit 1, nothing
    published; relaunched with more space, ``latest`` starts afresh and the logs hold each step once."""
    run = small_disk / "run"
    flags = ["--data", str(sim_data), "--output-dir", str(run), "--max-steps", "20", "--checkpointing-steps", "10"]
    flags += ["--batch-size", "2", "--crop-size", "64", "--base-channels", "8", "--channel-mults", "1,2"]
    flags += ["--validation-steps", "0", "--log-steps", "5", "--resume-from-checkpoint", "latest"]
    result = run_trainer(flags)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write checkpoint 10 to {run / 'checkpoints'} (") and "space" in last, last
    assert not (run / "checkpoints" / "checkpoint-10").exists()

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    again = run_trainer(flags)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "no complete checkpoint found" in again.stderr
    steps = [json.loads(line)["step"] for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]

"""Multi-node training on one machine: two ``accelerate launch`` invocations as machine 0 and machine 1
on 127.0.0.1 with the shipped ``multi_node.yaml``, and ``scripts/slurm_train.sh`` as shipped with a
stand-in ``srun`` that starts its two "nodes" here.

Overrides of ``multi_node.yaml``, and why: ``--num_processes 2`` (it says 16 = 2 nodes x 8 GPUs; here
each node is one CPU process, the machine has 2 cores), ``--main_process_port`` (a free port, so that
concurrent test runs do not collide). Everything else as shipped: static rendezvous on
``main_process_ip: 127.0.0.1``, ``same_network: false``, ``mixed_precision: bf16`` (autocast on CPU).
For the SLURM script: ``GPUS_PER_NODE=1`` (its documented override; no GPUs here) and ``MAIN_PORT``.
"""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port, kill_tree
from safetensors.torch import load_file

from hazematching.training import checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.multinode]
SMALL = ["--batch-size", "2", "--crop-size", "64", "--base-channels", "8", "--channel-mults", "1,2"]
SMALL += ["--validation-steps", "0"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def launch_node(rank: int, port: str, args: list[str], cwd: Path = REPO) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", str(REPO / "accelerate_configs" / "multi_node.yaml"), "--num_processes", "2"]
    cmd += ["--machine_rank", str(rank), "--main_process_port", port, str(REPO / "trainer" / "train.py"), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=cwd)


def launch_nodes(args: list[str], cwd: tuple[Path, Path] = (REPO, REPO)) -> list[subprocess.Popen]:
    port = free_port()
    return [launch_node(rank, port, args, cwd[rank]) for rank in (0, 1)]


def outputs(nodes: list[subprocess.Popen], timeout: int = 600) -> list[tuple[int, str]]:
    return [(node.wait(timeout=timeout), node.stdout.read()) for node in nodes]


def newest(run: Path) -> int:
    return int(checkpoints.latest_checkpoint(run / "checkpoints").name.split("-")[1])


def test_two_nodes_train_survive_a_dead_node_and_resume_on_both(sim_data, tmp_path):
    """Killed node 1 (every process of it): node 0 stops by itself within seconds, every published
    checkpoint holds both processes' state, and both nodes relaunched with ``latest`` end with the
    weights of an uninterrupted two-node run."""
    args = ["--data", str(sim_data), "--max-steps", "60", "--checkpointing-steps", "10", *SMALL]
    args += ["--checkpoints-total-limit", "3"]
    reference = tmp_path / "reference"
    for rc, out in outputs(launch_nodes([*args, "--output-dir", str(reference)])):
        assert rc == 0, out[-3000:]
    config = json.loads((reference / "config.json").read_text())
    assert config["num_processes"] == 2 and config["mixed_precision"] == "bf16"
    assert config["rank_weight_checksums"][0] == config["rank_weight_checksums"][1]

    run = tmp_path / "run"
    nodes = launch_nodes([*args, "--output-dir", str(run)])
    deadline = time.time() + 300
    while checkpoints.latest_checkpoint(run / "checkpoints") is None:
        assert nodes[0].poll() is None and nodes[1].poll() is None, "a node ended before the kill"
        assert time.time() < deadline
        time.sleep(0.02)
    kill_tree(nodes[1].pid)
    killed_at = time.time()
    rc, out = nodes[0].wait(timeout=120), nodes[0].stdout.read()
    assert rc != 0 and time.time() - killed_at < 60, out[-2000:]  # node 0 noticed, did not hang
    nodes[1].communicate()
    stopped = newest(run)
    assert stopped < 60, "the kill came too late to test anything"
    for checkpoint in checkpoints.list_checkpoints(run / "checkpoints"):
        assert checkpoints.missing_process_files(checkpoint, 2) == []

    results = outputs(launch_nodes([*args, "--output-dir", str(run), "--resume-from-checkpoint", "latest"]))
    for rc, out in results:
        assert rc == 0, out[-3000:]
    assert f"at step {stopped}" in results[0][1]
    config = json.loads((run / "config.json").read_text())
    assert config["step"] == 60 and config["rank_weight_checksums"][0] == config["rank_weight_checksums"][1]
    a, b = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_output_folder_not_shared_between_nodes_is_refused_at_start(sim_data, tmp_path):
    """Node 1 with its own disk (another working directory, the same relative --output-dir): both nodes
    stop before training with one line that names the folder and the blind process."""
    node1 = tmp_path / "node1"
    node1.mkdir()
    args = ["--data", str(sim_data), "--output-dir", "run", "--max-steps", "10", *SMALL]
    results = outputs(launch_nodes(args, cwd=(tmp_path, node1)), timeout=300)
    for rc, _ in results:
        assert rc != 0
    assert "--output-dir run is not shared between the processes: process 1 on" in results[0][1], results[0][1][-2000:]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_problem_found_on_one_node_stops_both_at_once(sim_data, tmp_path):
    """Node 1 cannot find the checkpoint to resume (a path that exists only on node 0): both nodes stop
    within seconds with that message from process 0, instead of node 0 waiting for the process group."""
    (tmp_path / "ckpt" / checkpoints.COMPLETE_MARKER).parent.mkdir()
    (tmp_path / "ckpt" / checkpoints.COMPLETE_MARKER).write_text("{}")
    node1 = tmp_path / "node1"
    node1.mkdir()
    args = ["--data", str(sim_data), "--output-dir", str(tmp_path / "run"), "--max-steps", "10", *SMALL]
    started = time.time()
    results = outputs(launch_nodes([*args, "--resume-from-checkpoint", "ckpt"], cwd=(tmp_path, node1)), timeout=120)
    assert time.time() - started < 100
    for rc, _ in results:
        assert rc != 0
    assert "error: --resume-from-checkpoint ckpt: not a complete checkpoint folder" in results[0][1], results[0][1]


def _stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_script_as_shipped_with_a_stand_in_srun(sim_data, tmp_path):
    """``sbatch scripts/slurm_train.sh DATA OUT FLAGS`` on two "nodes": the script's node list, process
    count, machine ranks, port and ``--resume-from-checkpoint latest`` reach two real launches that form
    one group; run again, it resumes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # SLURM's srun starts the command once per node with SLURM_NODEID set; this one does so locally
    _stand_in(
        bin_dir,
        "srun",
        'while [[ "$1" == --* ]]; do echo "$1" >> "$SRUN_LOG"; shift; done\n'
        "pids=()\n"
        'for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & pids+=($!); done\n'
        'rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc\n',
    )
    _stand_in(bin_dir, "scontrol", '[[ "$1 $2" == "show hostnames" ]] && printf "127.0.0.1\\nnode-b\\n"\n')
    run = tmp_path / "run"
    env = {
        **ENV,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "GPUS_PER_NODE": "1",
        "MAIN_PORT": free_port(),
        "SRUN_LOG": str(tmp_path / "srun.log"),
    }
    flags = ["--max-steps", "6", "--checkpointing-steps", "3", *SMALL]
    script = ["bash", "scripts/slurm_train.sh", str(sim_data), str(run)]
    first = subprocess.run([*script, *flags], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert (tmp_path / "srun.log").read_text().split() == ["--kill-on-bad-exit=1"]
    config = json.loads((run / "config.json").read_text())
    assert config["num_processes"] == 2 and config["step"] == 6
    assert config["rank_weight_checksums"][0] == config["rank_weight_checksums"][1]
    assert "no complete checkpoint found" in first.stderr  # --resume-from-checkpoint latest, as shipped

    flags[1] = "9"  # the requeued job: same script, a larger budget
    env["MAIN_PORT"] = free_port()
    again = subprocess.run([*script, *flags], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "at step 6" in again.stderr
    assert json.loads((run / "config.json").read_text())["step"] == 9

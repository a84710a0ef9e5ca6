"""End-to-end training: multi-process agreement, kill + resume, learning, DeepSpeed code path."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import REPO, accelerate_launcher, free_port, run_trainer
from safetensors.torch import load_file

from hazematching.core import sample_posterior
from hazematching.data.io import DataError, read_split
from hazematching.evaluation.metrics import range_invariant_psnr
from hazematching.run import RunError, load_model

pytestmark = pytest.mark.slow
SMALL = ["--crop-size", "64", "--base-channels", "8", "--channel-mults", "1,2", "--validation-steps", "0"]


def weights(run) -> dict:
    return load_file(run / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_train_one_model(sim_data, tmp_path):
    """The issue's command: 2 real processes (gloo), checkpoints at 20 and 40, identical ranks, and
    the same model as 1 process with the doubled per-process batch (gradients really averaged)."""
    two = tmp_path / "two"
    launcher = accelerate_launcher("cpu_2proc.yaml", "--main_process_port", free_port())
    common = ["--data", str(sim_data), "--max-steps", "40", "--checkpointing-steps", "20", *SMALL]
    check(run_trainer([*common, "--output-dir", str(two), "--batch-size", "2"], launcher=launcher))
    assert (two / "model.safetensors").is_file() and (two / "config.json").is_file()
    assert (two / "checkpoints" / "checkpoint-20").is_dir() and (two / "checkpoints" / "checkpoint-40").is_dir()
    config = json.loads((two / "config.json").read_text())
    assert config["num_processes"] == 2 and config["step"] == 40
    checksums = config["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]

    one = tmp_path / "one"
    check(run_trainer([*common, "--output-dir", str(one), "--batch-size", "4"]))
    assert json.loads((one / "config.json").read_text())["num_processes"] == 1
    assert max_difference(weights(one), weights(two)) < 1e-4

    # a run that sees other data ends elsewhere: the comparison above can fail
    half = tmp_path / "half"
    check(run_trainer([*common, "--output-dir", str(half), "--batch-size", "2"]))
    assert max_difference(weights(half), weights(two)) > 1e-3


def test_mean_anchor_trains_the_same_model_on_two_processes_and_after_a_resume(sim_data, tmp_path):
    """The objective with anchor items (x = 0, t = 0, target as velocity; --mean-anchor-fraction, keyed
    per item): 2 processes with half the batch match 1 process, a resumed run equals the uninterrupted
    one, the objective really differs from plain flow matching, and the run's MMSE is the anchor's."""
    common = ["--data", str(sim_data), "--max-steps", "20", "--checkpointing-steps", "10", *SMALL]
    zero = ["--mean-anchor-fraction", "0.5"]
    one = tmp_path / "one"
    check(run_trainer([*common, *zero, "--output-dir", str(one), "--batch-size", "4"]))
    saved = json.loads((one / "config.json").read_text())
    assert saved["training"]["mean_anchor_fraction"] == 0.5 and saved["sampler"]["mmse"] == "anchor"

    two = tmp_path / "two"
    launcher = accelerate_launcher("cpu_2proc.yaml", "--main_process_port", free_port())
    check(run_trainer([*common, *zero, "--output-dir", str(two), "--batch-size", "2"], launcher=launcher))
    assert max_difference(weights(one), weights(two)) < 1e-4

    resumed = tmp_path / "resumed"
    check(run_trainer([*common, *zero, "--output-dir", str(resumed), "--batch-size", "4", "--max-steps", "10"]))
    latest = ["--resume-from-checkpoint", "latest"]
    check(run_trainer([*common, *zero, "--output-dir", str(resumed), "--batch-size", "4", *latest]))
    assert max_difference(weights(resumed), weights(one)) == 0

    plain = tmp_path / "plain"
    check(run_trainer([*common, "--output-dir", str(plain), "--batch-size", "4"]))
    assert max_difference(weights(plain), weights(one)) > 1e-3


def test_sigkill_and_resume_latest_continues_exactly(sim_data, tmp_path):
    common = [
        "--data",
        str(sim_data),
        "--max-steps",
        "60",
        "--checkpointing-steps",
        "10",
        "--batch-size",
        "2",
        "--checkpoints-total-limit",
        "3",
        *SMALL,
    ]
    reference = tmp_path / "reference"
    check(run_trainer([*common, "--output-dir", str(reference)]))

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "trainer" / "train.py"), *common, "--output-dir", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint-20").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_done = [int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*")]
    assert max(steps_done) < 60, "the kill came too late to test anything"

    result = run_trainer([*common, "--output-dir", str(run), "--resume-from-checkpoint", "latest"])
    check(result)
    assert f"at step {max(steps_done)}" in result.stderr
    assert max_difference(weights(run), weights(reference)) < 1e-6
    for name in ("ema.safetensors", "model.safetensors"):
        a = load_file(run / "checkpoints" / "checkpoint-60" / name)
        b = load_file(reference / "checkpoints" / "checkpoint-60" / name)
        assert max_difference(a, b) < 1e-6
    steps = [json.loads(line)["step"] for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # the steps after the checkpoint are not logged twice
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint-40",
        "checkpoint-50",
        "checkpoint-60",
    ]


def test_training_learns_to_dehaze(sim_data, trained_run):
    """The session's run (conftest.TRAINED_RUN_FLAGS: 200 steps x batch 8) lowered its validation loss
    and its MMSE beats the widefield input."""
    run = trained_run
    losses = [json.loads(line)["val_loss"] for line in (run / "logs" / "validation.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and losses[1] < 0.5 * losses[0], losses
    assert (run / "samples" / "step-0000200.png").is_file()
    assert list((run / "logs").rglob("events.out.tfevents*"))

    loaded = load_model(run)
    norm = loaded.normalization
    gains = []
    for pair in read_split(sim_data / "test") + read_split(sim_data / "val"):
        cond = torch.from_numpy(norm.normalize_input(pair.input))[None, None]
        posterior = sample_posterior(loaded.model, cond, num_samples=4, steps=8, seed=0)
        mmse = norm.denormalize_target(posterior.mean[0, 0])
        target = torch.from_numpy(pair.target)
        gains.append(range_invariant_psnr(mmse, target) - range_invariant_psnr(torch.from_numpy(pair.input), target))
    assert np.mean(gains) > 2.0, gains


@pytest.mark.parametrize(
    "config, precision",
    [("deepspeed_zero2.yaml", "as shipped"), ("deepspeed_zero3.yaml", "as shipped"), ("deepspeed_zero3.yaml", "no")],
)
def test_deepspeed_configs_run_and_resume(sim_data, tmp_path, config, precision):
    """The DeepSpeed configs as shipped (bf16, on DeepSpeed's CPU accelerator) and ZeRO-3 in fp32: train,
    resume from ``latest`` and save fp32 weights that load and are finite. On CPU DeepSpeed runs one
    process per launch, so this checks the configs and the DeepSpeed code path (engine checkpoints,
    bf16 engine weights fed bf16 inputs, ZeRO-3 parameter gathering for the EMA), not distribution."""
    pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    common = [
        "--data",
        str(sim_data),
        "--output-dir",
        str(run),
        "--batch-size",
        "2",
        "--checkpointing-steps",
        "2",
        *SMALL,
    ]
    if precision != "as shipped":
        common += ["--mixed-precision", precision]
    launcher = accelerate_launcher(config, "--num_processes", "1", "--main_process_port", free_port())
    check(run_trainer([*common, "--max-steps", "2"], launcher=launcher))
    assert (run / "checkpoints" / "checkpoint-2" / "pytorch_model").is_dir()  # DeepSpeed engine state
    first = weights(run)
    result = run_trainer([*common, "--max-steps", "4", "--resume-from-checkpoint", "latest"], launcher=launcher)
    check(result)
    assert "at step 2" in result.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["step"] == 4
    assert saved["mixed_precision"] == ("bf16" if precision == "as shipped" else precision)
    final = weights(run)
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in final.values())
    assert max_difference(first, final) > 0  # the resumed steps trained
    ema = load_file(run / "checkpoints" / "checkpoint-4" / "ema.safetensors")
    assert all(v.dtype == torch.float32 for v in ema.values())
    loaded = load_model(run).model
    cond = torch.zeros(1, 1, 32, 32)
    assert torch.isfinite(loaded(cond, cond, torch.tensor([0.5]))).all()


def test_resume_with_other_model_flags_is_refused(sim_data, tmp_path):
    run = tmp_path / "run"
    common = [
        "--data",
        str(sim_data),
        "--output-dir",
        str(run),
        "--batch-size",
        "2",
        "--checkpointing-steps",
        "2",
        *SMALL,
    ]
    check(run_trainer([*common, "--max-steps", "2"]))
    before = weights(run)
    result = run_trainer([*common, "--max-steps", "4", "--resume-from-checkpoint", "latest", "--base-channels", "16"])
    assert result.returncode != 0
    assert (
        "resume with the same model flags" in result.stderr and "base_channels: checkpoint 8, flags 16" in result.stderr
    )
    assert "changed settings" not in result.stderr  # nothing is said about a resume that does not happen
    assert max_difference(weights(run), before) == 0  # the saved model is untouched


def test_compiled_training_equals_eager_and_resumes(sim_data, tmp_path):
    """--compile on (torch.compile through accelerate) trains the numbers eager training does, its
    checkpoints hold the plain module's names, and a compiled run resumes from them."""
    common = ["--data", str(sim_data), "--batch-size", "2", "--checkpointing-steps", "2", "--lr", "1e-3", *SMALL]
    eager = tmp_path / "eager"
    check(run_trainer([*common, "--output-dir", str(eager), "--max-steps", "4", "--compile", "off"]))
    assert json.loads((eager / "config.json").read_text())["compiled"] is False

    compiled = tmp_path / "compiled"
    check(run_trainer([*common, "--output-dir", str(compiled), "--max-steps", "2", "--compile", "on"]))
    checkpoint = load_file(compiled / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert checkpoint.keys() == weights(eager).keys()  # no "_orig_mod." prefixes
    result = run_trainer(
        [
            *common,
            "--output-dir",
            str(compiled),
            "--max-steps",
            "4",
            "--compile",
            "on",
            "--resume-from-checkpoint",
            "latest",
        ]
    )
    check(result)
    assert "at step 2" in result.stderr
    assert json.loads((compiled / "config.json").read_text())["compiled"] is True
    trained = max_difference(weights(eager), load_file(eager / "checkpoints" / "checkpoint-2" / "ema.safetensors"))
    assert trained > 1e-3  # steps 3-4 moved the weights far more than the tolerance below
    assert max_difference(weights(compiled), weights(eager)) < 1e-5
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(compiled / "checkpoints" / "checkpoint-4" / name)
        assert max_difference(a, load_file(eager / "checkpoints" / "checkpoint-4" / name)) < 1e-5


def test_compile_without_a_compiler_warns_and_trains_eagerly(sim_data, tmp_path):
    common = ["--data", str(sim_data), "--batch-size", "2", "--checkpointing-steps", "2", "--max-steps", "2", *SMALL]
    eager = tmp_path / "eager"
    check(run_trainer([*common, "--output-dir", str(eager), "--compile", "off"]))
    fallback = tmp_path / "fallback"
    env = {
        **os.environ,
        "CXX": "/nonexistent/g++",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    result = run_trainer([*common, "--output-dir", str(fallback), "--compile", "on"], env=env)
    check(result)
    assert result.stderr.count("torch.compile does not work here") == 1
    assert "training eagerly" in result.stderr
    assert json.loads((fallback / "config.json").read_text())["compiled"] is False
    assert max_difference(weights(fallback), weights(eager)) == 0


def test_shortcut_fine_tuning_starts_from_the_run_resumes_exactly_and_checks_flags(sim_data, trained_run, tmp_path):
    """--init-from + --shortcut-fraction: the base run's weights and normalisation, a zero step MLP,
    an exact resume of the new objective; other model flags than the base run's are refused."""
    base = load_model(trained_run)
    common = ["--data", str(sim_data), "--init-from", str(trained_run), "--shortcut-fraction", "0.25"]
    common += ["--batch-size", "4", "--crop-size", "64", "--validation-steps", "0"]

    start = tmp_path / "start"
    check(run_trainer([*common, "--output-dir", str(start), "--max-steps", "1", "--lr", "1e-12"]))
    tuned = load_model(start)
    assert tuned.config.architecture.step_conditioning and tuned.config.normalization == base.config.normalization
    state, base_state = weights(start), weights(trained_run)
    assert max(float((state[k] - base_state[k]).abs().max()) for k in base_state) < 1e-6
    assert float(state["step_mlp.2.weight"].abs().max()) < 1e-6

    reference = tmp_path / "reference"
    flags = [*common, "--max-steps", "20", "--checkpointing-steps", "10"]
    check(run_trainer([*flags, "--output-dir", str(reference)]))
    resumed = tmp_path / "resumed"
    check(run_trainer([*flags, "--output-dir", str(resumed), "--max-steps", "10"]))
    check(run_trainer([*flags, "--output-dir", str(resumed), "--resume-from-checkpoint", "latest"]))
    assert max_difference(weights(resumed), weights(reference)) < 1e-6
    assert (
        max_difference(weights(reference), base_state | {k: state[k] for k in state if k.startswith("step_mlp")}) > 1e-4
    )

    result = run_trainer([*common, "--output-dir", str(tmp_path / "bad"), "--max-steps", "1", "--base-channels", "8"])
    assert result.returncode != 0 and "give the same model flags as that run" in result.stderr


def test_resume_keeps_the_normalisation_and_records_changed_settings(sim_data, tmp_path):
    """Resumed on other data (3x brighter) with another batch size: the network keeps the statistics
    it was trained with (else the same image predicts another result), the user is told, and
    config.json records what changed from which step; a later resume without changes keeps that history."""
    run = tmp_path / "run"
    common = ["--output-dir", str(run), "--checkpointing-steps", "2", *SMALL]
    check(run_trainer(["--data", str(sim_data), "--batch-size", "2", "--max-steps", "2", *common]))
    first = json.loads((run / "config.json").read_text())
    assert "setting_changes" not in first

    brighter = tmp_path / "brighter"
    for path in sim_data.rglob("*.tif*"):
        out = brighter / path.relative_to(sim_data)
        out.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out, (tifffile.imread(path).astype(np.float32) * 3).astype(np.float32))
    resume = ["--resume-from-checkpoint", "latest"]
    result = run_trainer(["--data", str(brighter), "--batch-size", "4", "--max-steps", "4", *resume, *common])
    check(result)
    assert "keeps the normalisation the network was trained with" in result.stderr
    assert "resuming at step 2 with changed settings:" in result.stderr and "batch_size 2 -> 4" in result.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["normalization"] == first["normalization"]
    assert saved["setting_changes"] == [
        {"step": 2, "changes": {"data": [str(sim_data), str(brighter)], "batch_size": [2, 4], "max_steps": [2, 4]}}
    ]
    state = json.loads((run / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["normalization"] == first["normalization"] and state["training"]["batch_size"] == 4

    # a checkpoint of an earlier release lacks the newer fields: at their defaults they are no change
    marker = run / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    older = json.loads(marker.read_text())
    del older["training"]["mean_anchor_fraction"]
    # ... and its run samples independently (no sample_noise): resumed without the flag, it still does
    assert older["training"]["sampler"].pop("sample_noise") == "antithetic"
    marker.write_text(json.dumps(older))
    again = run_trainer(["--data", str(brighter), "--batch-size", "4", "--max-steps", "4", *resume, *common])
    check(again)
    assert "changed settings" not in again.stderr
    resumed = json.loads((run / "config.json").read_text())
    assert resumed["setting_changes"] == saved["setting_changes"] and "sample_noise" not in resumed["sampler"]


def test_resuming_an_older_checkpoint_sets_the_newer_state_aside_and_records_the_rewind(sim_data, tmp_path):
    """--resume-from-checkpoint checkpoint-2 of a run at step 6: the step-6 model, its config.json (with
    its own setting history) and the newer checkpoints move to superseded/step-6 instead of being
    overwritten or rotated away; config.json records the rewind; ``latest`` finds the rewound branch."""
    run = tmp_path / "run"
    common = ["--data", str(sim_data), "--output-dir", str(run), "--checkpointing-steps", "2", *SMALL]
    check(run_trainer([*common, "--batch-size", "2", "--max-steps", "4"]))
    latest = ["--resume-from-checkpoint", "latest"]
    check(run_trainer([*common, "--batch-size", "2", "--max-steps", "6", "--lr", "2e-4", *latest]))
    reached, reached_weights = json.loads((run / "config.json").read_text()), weights(run)
    assert reached["step"] == 6 and reached["setting_changes"][0]["step"] == 4

    back = ["--resume-from-checkpoint", str(run / "checkpoints" / "checkpoint-2")]
    result = run_trainer([*common, "--batch-size", "2", "--max-steps", "5", *back])
    check(result)
    kept = run / "superseded" / "step-6"
    note = f"going back from step 6 to step 2: the newer model, config.json, logs and checkpoints are kept in {kept}"
    assert note in result.stderr
    assert json.loads((kept / "config.json").read_text()) == reached
    assert max_difference(load_file(kept / "model.safetensors"), reached_weights) == 0
    assert load_model(kept).config.step == 6  # a run folder of its own
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert [json.loads(line)["step"] for line in (kept / "logs" / "train.jsonl").read_text().splitlines()][-1] == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]
    now = json.loads((run / "config.json").read_text())
    assert now["step"] == 5
    assert now["setting_changes"] == [{"step": 2, "changes": {"max_steps": [4, 5]}, "rewound_from_step": 6}]
    assert max_difference(weights(run), reached_weights) > 0


def test_the_last_step_is_a_checkpoint_so_latest_never_goes_behind_the_saved_model(sim_data, tmp_path):
    """A run ending between checkpoints (7 steps, every 2) checkpoints its last step: resuming ``latest``
    with other settings continues from step 7 instead of overwriting the step-7 model with a branch from
    step 6. A run of an earlier release (no final checkpoint) has its step-7 model set aside first."""
    run = tmp_path / "run"
    common = ["--data", str(sim_data), "--output-dir", str(run), "--checkpointing-steps", "2", *SMALL]
    check(run_trainer([*common, "--batch-size", "2", "--max-steps", "7"]))
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "checkpoint-7"
    reached = weights(run)
    latest = ["--resume-from-checkpoint", "latest"]
    result = run_trainer([*common, "--batch-size", "2", "--max-steps", "9", "--lr", "2e-4", *latest])
    check(result)
    assert "at step 7" in result.stderr and json.loads((run / "config.json").read_text())["step"] == 9

    older = tmp_path / "older"  # as an earlier release left it: the model at step 7, checkpoints up to 6
    check(run_trainer([*common[:3], str(older), *common[4:], "--batch-size", "2", "--max-steps", "7"]))
    shutil.rmtree(older / "checkpoints" / "checkpoint-7")
    result = run_trainer([*common[:3], str(older), *common[4:], "--batch-size", "2", "--max-steps", "8", *latest])
    check(result)
    assert "going back from step 7 to step 6" in result.stderr
    assert max_difference(load_file(older / "superseded" / "step-7" / "model.safetensors"), reached) == 0

    other = ["--resume-from-checkpoint", str(older / "checkpoints" / "checkpoint-8")]
    result = run_trainer(
        [*common[:3], str(tmp_path / "branch"), *common[4:], "--batch-size", "2", "--max-steps", "9", *other]
    )
    check(result)
    assert "checkpoint-8 is a checkpoint of another run" in result.stderr


def test_relative_data_paths_are_stored_absolute_so_export_finds_the_test_image_elsewhere(
    sim_data, tmp_path, monkeypatch
):
    """Trained with ``--data ../sim`` from one folder, the run was exported from another: its test image
    was looked for relative to the wrong folder. The run stores the data folders as absolute paths."""
    from export.geometry import Geometry
    from export.test_tensors import crop_test_image
    from hazematching.run import read_description

    started = tmp_path / "project"
    started.mkdir()
    relative = os.path.relpath(sim_data, started)
    flags = ["--data", relative, "--val-data", os.path.join(relative, "val"), "--output-dir", "run", *SMALL]
    check(run_trainer([*flags, "--batch-size", "2", "--max-steps", "1"], cwd=started))
    training = read_description(started / "run").training
    assert training.data == sim_data.absolute() and training.val_data == (sim_data / "val").absolute()
    monkeypatch.chdir(tmp_path)  # where export runs
    image = crop_test_image(read_description(started / "run"), None, 64, Geometry(halo=8, min_size=24, step=1))
    assert image.shape == (64, 64)
    paired = sorted((sim_data / "test").glob("*.tif"))[0]  # a training pair: --test-channel picks its widefield
    with pytest.raises(DataError, match=r"pick one with --test-channel C"):
        crop_test_image(read_description(started / "run"), paired, 64, Geometry(8, 24, 1))
    image = crop_test_image(read_description(started / "run"), paired, 64, Geometry(8, 24, 1), channel=1)
    assert np.array_equal(image, read_split(sim_data / "test")[0].input[32:96, 32:96])
    older = read_description(started / "run").training.model_copy(update={"data": Path(relative)})
    with pytest.raises(RunError, match=r"a relative path, stored by an earlier release.*pass --test-image"):
        crop_test_image(
            read_description(started / "run").model_copy(update={"training": older}), None, 64, Geometry(8, 24, 1)
        )


def test_training_on_a_constant_target_is_refused_before_any_step(tmp_path):
    """The shared robustness case 2: an empty (constant) target channel used to train with exit 0."""
    for split, seeds in (("train", (1, 2, 3)), ("val", (4,))):
        for seed in seeds:
            pair = (np.random.default_rng(seed).random((2, 96, 96)) * 1000).astype(np.uint16)
            pair[0] = 42
            (tmp_path / "data" / split).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(tmp_path / "data" / split / f"c{seed}.tif", pair)
    result = run_trainer(["--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"), *SMALL])
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: {tmp_path / 'data' / 'train' / 'c1.tif'}: the target (channel 0) (training split) is constant"
        )
    )
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_fine_tuning_and_resuming_keep_the_sample_noise_of_the_run(trained_run, tmp_path):
    """New runs sample in antithetic pairs; a run of an earlier release (no sample_noise in its
    config.json) samples independently, and so do a fine-tuned child of it and a resume of it
    without the flag; the flag overrides both."""
    from hazematching.config import TrainConfig
    from hazematching.training.trainer import with_base_run_settings, with_resumed_sample_noise

    description = json.loads((trained_run / "config.json").read_text())
    assert description["sampler"]["sample_noise"] == "antithetic"
    older = tmp_path / "older"
    older.mkdir()
    del description["sampler"]["sample_noise"]
    (older / "config.json").write_text(json.dumps(description))
    for parent, noise in ((older, "independent"), (trained_run, "antithetic")):
        child, taken = with_base_run_settings(TrainConfig(data=tmp_path, output_dir=tmp_path / "c", init_from=parent))
        assert "sampler" in taken and child.sampler.sample_noise == noise
    # the anchor MMSE is inherited only by a child that is trained at the anchor too
    anchored = tmp_path / "anchored"
    anchored.mkdir()
    description["sampler"]["mmse"] = "anchor"
    description["training"]["mean_anchor_fraction"] = 0.5
    (anchored / "config.json").write_text(json.dumps(description))
    for fraction, mmse in ((0.0, "samples"), (0.25, "anchor")):
        child, _ = with_base_run_settings(
            TrainConfig(data=tmp_path, output_dir=tmp_path / "c", init_from=anchored, mean_anchor_fraction=fraction)
        )
        assert child.sampler.mmse == mmse
    flagged = TrainConfig(data=tmp_path, output_dir=tmp_path / "c", sampler={"sample_noise": "antithetic"})
    assert (
        with_base_run_settings(flagged.model_copy(update={"init_from": older}))[0].sampler.sample_noise == "antithetic"
    )

    fresh = TrainConfig(data=tmp_path, output_dir=tmp_path / "c")
    assert fresh.sampler.sample_noise == "antithetic"
    assert with_resumed_sample_noise(fresh, description["training"] | {"sampler": {}}).sampler.sample_noise == (
        "independent"
    )
    assert with_resumed_sample_noise(fresh, {"sampler": {"sample_noise": "antithetic"}}).sampler.sample_noise == (
        "antithetic"
    )
    assert with_resumed_sample_noise(flagged, {"sampler": {}}).sampler.sample_noise == "antithetic"

import json

import pytest
from conftest import run_trainer, write_pair

from hazematching.training.args import parse_train_config


def test_flags_mirror_the_config(tmp_path):
    cfg = parse_train_config(
        [
            "--data",
            "d",
            "--output-dir",
            "o",
            "--max-steps",
            "7",
            "--batch-size",
            "3",
            "--crop-size",
            "64",
            "--lr",
            "0.001",
            "--gradient-accumulation-steps",
            "2",
            "--mixed-precision",
            "bf16",
            "--seed",
            "4",
            "--checkpointing-steps",
            "5",
            "--checkpoints-total-limit",
            "2",
            "--resume-from-checkpoint",
            "latest",
            "--ema-decay",
            "0.99",
            "--validation-steps",
            "3",
            "--channel-mults",
            "1,2",
            "--sampler-steps",
            "9",
            "--no-augment",
        ]
    )
    assert (cfg.max_steps, cfg.batch_size, cfg.crop_size, cfg.lr) == (7, 3, 64, 0.001)
    assert cfg.gradient_accumulation_steps == 2 and cfg.mixed_precision == "bf16" and cfg.seed == 4
    assert cfg.checkpoints_total_limit == 2 and cfg.resume_from_checkpoint == "latest"
    assert cfg.ema_decay == 0.99 and cfg.validation_steps == 3 and cfg.augment is False
    assert cfg.model.channel_mults == (1, 2) and cfg.sampler.steps == 9


def test_config_file_with_flag_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: d\noutput_dir: o\nbatch_size: 5\nmodel:\n  base_channels: 16\n")
    cfg = parse_train_config(["--config", str(path), "--batch-size", "6"])
    assert cfg.batch_size == 6 and cfg.model.base_channels == 16 and str(cfg.data) == "d"
    # a run's config.json is a valid config file too
    run_json = tmp_path / "config.json"
    run_json.write_text(json.dumps({"training": json.loads(cfg.model_dump_json())}))
    assert parse_train_config(["--config", str(run_json)]) == cfg


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--crop-size", "62"], "multiple of the U-Net stride 4"),
        (["--ema-decay", "1.5"], "--ema-decay"),
        (["--max-steps", "0"], "--max-steps"),
        (
            ["--checkpoints-total-limit", "2", "--checkpointing-steps", "500", "--max-steps", "100"],
            "no checkpoint would ever be written",
        ),
        (["--crop-size", "62"], "--crop-size 62 must be"),
        (["--time-grid-points", "1"], "--time-grid-points: must be 0"),
        (["--lr-warmup-steps", "100", "--max-steps", "50"], "--lr-warmup-steps (100) must be < --max-steps (50)"),
        (["--sampler-solver", "shortcut"], "--sampler-solver shortcut needs --shortcut-fraction > 0"),
        (["--objective", "mse", "--mean-anchor-fraction", "0.5"], "--mean-anchor-fraction needs --objective cfm"),
        (["--norm", "batch"], "invalid choice"),
        (["--bogus-flag", "1"], "unrecognized arguments"),
    ],
)
def test_invalid_flags_exit_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_train_config(["--data", "d", "--output-dir", "o", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_field_in_config_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: d\noutput_dir: o\nbatch_szie: 5\n")
    with pytest.raises(SystemExit):
        parse_train_config(["--config", str(path)])
    assert "batch-szie" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setup, flags, message",
    [
        (lambda d: None, [], "data directory does not exist"),
        (
            lambda d: write_pair(d / "train" / "x.tif", shape=(48, 48)),
            ["--crop-size", "64"],
            "smaller than the crop size 64",
        ),
        (lambda d: write_pair(d / "a.tif"), ["--mixed-precision", "fp16"], "fp16 needs a CUDA GPU"),
        (
            lambda d: (write_pair(d / "a.tif"), write_pair(d / "b.tif")),
            ["--resume-from-checkpoint", "nowhere"],
            "not a complete checkpoint",
        ),
    ],
)
def test_trainer_rejects_bad_input_before_training(tmp_path, setup, flags, message):
    data = tmp_path / "data"
    setup(data)
    out = tmp_path / "run"
    result = run_trainer(["--data", str(data), "--output-dir", str(out), "--crop-size", "32", *flags], timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (out / "checkpoints").exists()


def test_the_trainer_says_how_it_split_the_data(tmp_path):
    from hazematching.config import TrainConfig
    from hazematching.data.io import ImagePair
    from hazematching.training.trainer import _split_line

    def pairs(folder, names):
        return [ImagePair(n, None, None, folder / f"{n}.tif", folder / f"{n}.tif") for n in names]

    flat = TrainConfig(data=tmp_path, output_dir=tmp_path / "run")
    line = _split_line(pairs(tmp_path, ["a", "b", "c"]), pairs(tmp_path, ["d"]), flat)
    assert line.startswith(f"data: training on 3 pair(s) of {tmp_path}, validating on the last 1 file(s) by name (d")
    nested = _split_line(pairs(tmp_path / "train", ["a"]), pairs(tmp_path / "val", ["v", "w"]), flat)
    assert (
        nested
        == f"data: training on 1 pair(s) of {tmp_path / 'train'}, validating on the 2 pair(s) of {tmp_path / 'val'}"
    )

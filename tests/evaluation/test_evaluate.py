"""The evaluate and calibrate commands end to end on a trained run (and its U-Net baseline)."""

import json
import warnings

import numpy as np
import pytest
import torch

from hazematching.cli import main as cli_main
from hazematching.data.io import read_split
from hazematching.inference.predict import CalibrationWarning, predict_array
from hazematching.run import load_model


def test_evaluate_and_calibrate_cli(trained_run, baseline_run, sim_data, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    out = tmp_path / "eval"
    cli_main(
        [
            "evaluate",
            "--model",
            str(run),
            "--data",
            str(sim_data / "test"),
            "--output",
            str(out),
            "--baseline",
            str(baseline_run),
            "--samples",
            "3",
            "--steps",
            "3",
        ]
    )
    result = json.loads((out / "metrics.json").read_text())
    assert set(result["mean"]) == {"widefield input", "U-Net baseline", "HazeMatching MMSE", "HazeMatching sample"}
    row = result["mean"]["HazeMatching MMSE"]
    assert {"psnr", "ms_ssim", "gmsd", "fsim"} <= set(row) and "micro_ms3im" not in row
    # robustness case 11: every metric left out is listed with its reason (these images are 128 px)
    assert set(result["not_computed"]) == {"lpips", "fid", "micro_ms3im"}
    assert result["not_computed"]["micro_ms3im"].startswith("not computed: MicroMS3IM needs images of at least 161")
    assert "micro_ms3im: not computed: MicroMS3IM needs" in (out / "metrics.md").read_text()

    # with local backbones (made here) LPIPS and FID are computed
    from safetensors.torch import save_file
    from test_perceptual import MeanFeatures, TwoConvs, script

    save_file({"lin0": torch.ones(8), "lin1": torch.ones(16)}, tmp_path / "lin.safetensors")
    cli_main(
        [
            "evaluate",
            "--model",
            str(run),
            "--data",
            str(sim_data / "test"),
            "--output",
            str(tmp_path / "eval2"),
            "--samples",
            "2",
            "--steps",
            "2",
            "--lpips-backbone",
            str(script(TwoConvs(), tmp_path / "a.pt")),
            "--lpips-linear",
            str(tmp_path / "lin.safetensors"),
            "--fid-backbone",
            str(script(MeanFeatures(), tmp_path / "f.pt")),
        ]
    )
    result = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert set(result["not_computed"]) == {"micro_ms3im"}
    assert all({"lpips", "fid"} <= set(r) for r in result["mean"].values())
    names = [p.stem for p in (sim_data / "test").glob("*.tif")]
    assert sorted(p.stem for p in (out / "figures").glob("*.png")) == sorted(names)
    assert "| HazeMatching MMSE |" in (out / "metrics.md").read_text()

    cli_main(
        [
            "calibrate",
            "--model",
            str(run),
            "--data",
            str(sim_data / "val"),
            "--samples",
            "4",
            "--steps",
            "3",
            "--bins",
            "5",
        ]
    )
    calibration = json.loads((run / "config.json").read_text())["calibration"]
    assert calibration["plot_data"].endswith("test") and (run / "calibration.png").is_file()
    loaded = load_model(run)
    image = read_split(sim_data / "test")[0].input
    raw = predict_array(loaded, image, samples=3, steps=2, progress=False)
    with pytest.warns(CalibrationWarning, match=r"fitted with K = 4, N = 3, solver = euler but .* K = 3, N = 2") as w:
        cal = predict_array(loaded, image, samples=3, steps=2, calibrated=True, progress=False)
    # the refit command names this run and the data of the fit, not placeholders
    assert f"`hazematching calibrate --model {run} --data {calibration['fit_data']} --samples 3" in str(w[0].message)
    assert np.allclose(cal.std, calibration["scale"] * raw.std + calibration["offset"], rtol=1e-5, atol=1e-4)
    with warnings.catch_warnings():  # the settings it was fitted with: no warning
        warnings.simplefilter("error", CalibrationWarning)
        predict_array(loaded, image, samples=4, steps=3, calibrated=True, progress=False)
    # the CLI warns too (as one line: "warning: the std calibration was fitted with ...")
    with pytest.warns(CalibrationWarning, match="fitted with K = 4, N = 3, solver = euler but .* K = 2, N = 3"):
        cli_main(
            ["predict", "--model", str(run), "--input", str(sim_data / "test"), "--output", str(tmp_path / "p")]
            + ["--channel", "1", "--samples", "2", "--steps", "3", "--calibrated", "--quiet"]
        )

    # one sample has no spread to calibrate: refused (exit status 2) before any work, not a LAPACK error
    with pytest.raises(SystemExit) as stop:
        cli_main(["calibrate", "--model", str(run), "--data", str(sim_data / "val"), "--samples", "1"])
    assert stop.value.code == 2 and "--samples 1: calibration needs K >= 2" in capsys.readouterr().err

    # a baseline where a HazeMatching run is needed, and a HazeMatching run as baseline
    for args in (
        ["evaluate", "--model", str(baseline_run), "--data", str(sim_data / "test")],
        ["calibrate", "--model", str(baseline_run), "--data", str(sim_data / "val")],
        ["evaluate", "--model", str(run), "--data", str(sim_data / "test"), "--baseline", str(run)],
    ):
        with pytest.raises(SystemExit, match="baseline"):
            cli_main(args)

"""A run directory and a package made by release 0.1.0 (before the package was regrouped and the run
description typed) still load and give the numbers they gave then (tests/assets/v0.1.0)."""

import zipfile
from pathlib import Path

import numpy as np
import torch

from hazematching.inference import predict_array
from hazematching.run import load_model

ASSETS = Path(__file__).parent / "assets" / "v0.1.0"


def test_old_run_loads_and_predicts_the_same_numbers():
    run = load_model(ASSETS / "run")
    assert run.config.calibration is not None and run.config.sampler.steps == 3
    expected = np.load(ASSETS / "expected.npz")
    # settings as they were then: the run's sampler defaults, tiles of 256 with 64 overlap, calibrated std
    result = predict_array(run, expected["image"], calibrated=True, progress=False, compile="off")
    np.testing.assert_allclose(result.mean, expected["mean"], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(result.std, expected["std"], rtol=1e-6, atol=1e-5)


def test_old_package_reproduces_its_test_output(tmp_path):
    with zipfile.ZipFile(ASSETS / "package.zip") as archive:
        archive.extractall(tmp_path)
    model = torch.jit.load(str(tmp_path / "hazematching_torchscript.pt")).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(np.load(tmp_path / "test_input.npy"))).numpy()
    expected = np.load(tmp_path / "test_output.npy")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4 * float(np.abs(expected).max()))

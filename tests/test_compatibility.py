"""A run directory and a package made by release 0.1.0 (before the package was regrouped and the run
description typed) still load and give the numbers they gave then (tests/assets/v0.1.0)."""

import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml

from hazematching.inference import predict_array
from hazematching.run import load_model

ASSETS = Path(__file__).parent / "assets" / "v0.1.0"


def test_old_run_loads_and_predicts_the_same_numbers():
    run = load_model(ASSETS / "run")
    assert run.config.calibration is not None and run.config.sampler.steps == 3
    expected = np.load(ASSETS / "expected.npz")
    # settings as they were then: the run's sampler defaults, tiles of 256 with 64 overlap, calibrated std
    result = predict_array(run, expected["image"], calibrated=True, progress=False, compile="off")
    # float32 to within a few ulp of the image's range: another CPU's SIMD path reorders the sums (seen
    # here on an AMD EPYC: 7.6e-5 on a mean image of range ~400); a real change moves pixels by far more
    for name in ("mean", "std"):
        scale = float(np.abs(expected[name]).max())
        np.testing.assert_allclose(getattr(result, name), expected[name], rtol=1e-6, atol=2e-6 * scale)


def test_old_package_reproduces_its_test_output(tmp_path):
    with zipfile.ZipFile(ASSETS / "package.zip") as archive:
        archive.extractall(tmp_path)
    model = torch.jit.load(str(tmp_path / "hazematching_torchscript.pt")).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(np.load(tmp_path / "test_input.npy"))).numpy()
    expected = np.load(tmp_path / "test_output.npy")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4 * float(np.abs(expected).max()))


def test_old_calibrated_run_exports_a_package_that_equals_predict(tmp_path):
    """Export reads the old run's typed description (calibration included): the package's std is the
    calibrated std that ``predict_array`` gives."""
    import tifffile

    from hazematching.export import export_model

    image = (np.random.default_rng(1).random((96, 96)) * 800 + 100).astype(np.float32)
    tifffile.imwrite(tmp_path / "test.tif", image)
    package = export_model(ASSETS / "run", tmp_path / "old.zip", test_image=tmp_path / "test.tif", test_size=64)
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path / "pkg")
        readme = archive.read("README.md").decode()
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert "calibrated as 0.04681 × std + 301.4" in readme
    assert rdf["outputs"][0]["description"].endswith("std over the samples, calibrated: max(a*std+b, 0)")
    model = torch.jit.load(str(tmp_path / "pkg" / "hazematching_torchscript.pt")).eval()
    test_input = np.load(tmp_path / "pkg" / "test_input.npy")
    with torch.no_grad():
        out = model(torch.from_numpy(test_input))[0].numpy()
    ours = predict_array(load_model(ASSETS / "run"), test_input[0, 0], calibrated=True, progress=False, compile="off")
    np.testing.assert_allclose(out[0], ours.mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out[1], ours.std, rtol=1e-4, atol=1e-3)

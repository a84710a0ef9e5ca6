"""Inputs far outside the training intensities: one check, reported by predict_array, the experiment
runner (stderr, manifest and summary, also with --quiet) and the napari engine (robustness case 4)."""

import json
import warnings

import numpy as np
import pytest
import tifffile

from hazematching.cli import main as cli_main
from hazematching.data.io import read_split
from hazematching.inference.experiment import MANIFEST_NAME
from hazematching.inference.input_range import InputRangeWarning, out_of_range
from hazematching.inference.predict import predict_array
from hazematching.napari.engine import RunModel, dehaze
from hazematching.run import load_model

OPTIONS = dict(samples=2, steps=2)


def _held_out(sim_data):
    return [p.input for p in read_split(sim_data / "test") + read_split(sim_data / "val")]


def test_held_out_images_pass_and_scaled_ones_are_named(trained_run, sim_data):
    norm = load_model(trained_run).normalization
    for image in _held_out(sim_data):
        assert out_of_range(norm, image) is None
    image = _held_out(sim_data)[0]
    for scaled in (image * 1000, image / 1000, np.full_like(image, image.mean() + 50 * norm.input_std)):
        message = out_of_range(norm, scaled)
        assert message is not None and f"mean {norm.input_mean:.4g}, std {norm.input_std:.4g}" in message


def test_predict_array_warns_once_per_call(trained_run, sim_data):
    run = load_model(trained_run)
    image = _held_out(sim_data)[0][:64, :64]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_array(run, image, progress=False, **OPTIONS)
        assert not [w for w in caught if issubclass(w.category, InputRangeWarning)]
        predict_array(run, image * 1000, progress=False, **OPTIONS)
    messages = [str(w.message) for w in caught if issubclass(w.category, InputRangeWarning)]
    assert len(messages) == 1 and messages[0].startswith("image: intensities (mean ")


def test_experiment_reports_the_file_even_when_quiet(trained_run, sim_data, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    image = _held_out(sim_data)[0][:64, :64]
    tifffile.imwrite(src / "normal.tif", image.astype(np.float32))
    tifffile.imwrite(src / "x1000.tif", (image * 1000).astype(np.float32))
    out = tmp_path / "out"
    cli_main(["predict", "--model", str(trained_run), "--input", str(src), "--output", str(out), "--quiet",
              "--samples", "2", "--steps", "2"])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "far outside" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {src / 'x1000.tif'}: intensities")
    manifest = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert manifest["x1000.tif"]["warning"] == lines[0] and manifest["normal.tif"]["warning"] is None
    assert manifest["x1000.tif"]["status"] == "complete"  # a warning, not a refusal: the output is there
    assert (out / "x1000.tif").is_file() and (out / "normal.tif").is_file()


def test_napari_engine_reports_the_layer(trained_run, sim_data):
    image = _held_out(sim_data)[0][:64, :64]
    model = RunModel(trained_run)
    assert dehaze(model, image[None], "layer", OPTIONS).warning is None
    result = dehaze(model, (image * 1000)[None], "layer", OPTIONS)
    assert result.warning.startswith("layer: intensities") and result.mean.shape == (1, 64, 64)


@pytest.mark.parametrize("planes", [1, 5])
def test_summary_lists_the_warning(trained_run, sim_data, tmp_path, capsys, planes):
    image = _held_out(sim_data)[0][:32, :32]
    stack = np.stack([image * 1000] * planes).astype(np.float32)
    tifffile.imwrite(
        tmp_path / "x.tif", stack, photometric="minisblack", metadata={"axes": "ZYX" if planes > 1 else "YX"}
    )
    cli_main(["predict", "--model", str(trained_run), "--input", str(tmp_path / "x.tif"), "--output",
              str(tmp_path / "out.tif"), "--quiet", "--samples", "2", "--steps", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert "WARNING out.tif: " in out and "far outside" in out

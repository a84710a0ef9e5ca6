"""The napari plugin in a real viewer (pytest-qt; on Linux under Xvfb: `xvfb-run -a python -m pytest`).
Runs where the napari extra and pytest-qt are installed (the modern CI environment)."""

import importlib.util
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile

if not all(importlib.util.find_spec(m) for m in ("napari", "pytestqt")) or not any(
    importlib.util.find_spec(m) for m in ("PyQt6", "PyQt5", "PySide6")
):
    pytest.skip('needs the napari extra and pytest-qt: pip install ".[napari]" pytest-qt', allow_module_level=True)
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    pytest.skip("needs a display: run the tests under xvfb-run -a", allow_module_level=True)

from hazematching.cli import main as cli_main  # noqa: E402
from hazematching.data.demo_pair import DEMO_PAIR  # noqa: E402
from hazematching.data.io import read_two_channel  # noqa: E402
from hazematching.inference.experiment import derive_seed  # noqa: E402
from hazematching.inference.predict import predict_array  # noqa: E402
from hazematching.napari import engine  # noqa: E402
from hazematching.run import load_model  # noqa: E402

WAIT_MS = 300_000


@pytest.fixture
def widefield():
    return read_two_channel(DEMO_PAIR).input.astype(np.uint16)


@pytest.fixture
def widget(make_napari_viewer, trained_run):
    from hazematching.napari.widget import DehazeWidget

    viewer = make_napari_viewer()
    widget = DehazeWidget(viewer)
    widget.model_path.setText(str(trained_run))
    assert widget.load_model(), widget.status.text()
    widget.samples.setValue(2)
    widget.steps.setValue(2)
    widget.seed.setValue(3)
    widget.device.setCurrentText("cpu")
    return widget


def _run(qtbot, widget, layer_name):
    widget.layer.setCurrentText(layer_name)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_manifest_is_valid_and_the_plugin_is_discovered():
    from npe2 import PluginManager, PluginManifest

    manifest = PluginManifest.from_distribution("hazematching")
    assert manifest.name == "hazematching"
    assert {w.display_name for w in manifest.contributions.widgets} == {"Dehaze"}
    result = subprocess.run(["npe2", "validate", "hazematching"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    manager = PluginManager.instance()
    manager.discover()
    assert "hazematching" in {m.name for m in manager.iter_manifests()}
    # the sample: widefield input and confocal target of the shipped pair
    from hazematching.napari.sample import sample_pair

    layers = sample_pair()
    assert [meta["name"] for _, meta, _ in layers] == ["confocal (target)", "widefield"]
    assert layers[1][0].shape == (256, 256)


def test_2d_layer_gives_predict_array_results_with_the_layers_geometry(qtbot, widget, widefield, trained_run):
    image = widefield[:64, :80]
    layer = widget.viewer.add_image(image, name="wf", scale=(0.1, 0.2), translate=(5.0, 7.0))
    _run(qtbot, widget, "wf")
    mean, std = widget.viewer.layers["wf dehazed"], widget.viewer.layers["wf std"]
    expected = predict_array(
        load_model(trained_run),
        image.astype(np.float32),
        samples=2,
        steps=2,
        seed=derive_seed(3, "wf", 0),
        progress=False,
    )
    np.testing.assert_array_equal(mean.data, expected.mean)
    np.testing.assert_array_equal(std.data, expected.std)
    for out in (mean, std):
        assert tuple(out.scale) == tuple(layer.scale) and tuple(out.translate) == tuple(layer.translate)
        assert tuple(out.axis_labels) == tuple(layer.axis_labels)
        lo, hi = out.contrast_limits
        assert out.data.min() <= hi and lo < hi


def test_the_progress_bar_is_full_after_a_run_and_empty_after_a_cancel(qtbot, widget, widefield):
    """It read 0 % after a finished run (robustness README)."""
    widget.viewer.add_image(widefield[:64, :64], name="wf")
    _run(qtbot, widget, "wf")
    assert widget.progress.value() == widget.progress.maximum() > 0
    widget._errored(engine.Cancelled())  # what a cancelled run reports
    assert widget.progress.value() == 0


def test_a_u_net_run_gives_its_one_prediction_with_the_sampler_settings_off(qtbot, widget, widefield, baseline_run):
    """A U-Net takes no sampler settings (predict refuses them): the widget greys them out, sends
    none, and adds the prediction only."""
    widget.model_path.setText(str(baseline_run))
    assert widget.load_model(), widget.status.text()
    assert not widget.samples.isEnabled() and not widget.keep_samples.isEnabled()
    assert "U-Net baseline" in widget.model_note.text()
    widget.viewer.add_image(widefield[:64, :64], name="wf")
    _run(qtbot, widget, "wf")
    assert [layer.name for layer in widget.viewer.layers] == ["wf", "wf dehazed"], widget.status.text()
    expected = predict_array(load_model(baseline_run), widefield[:64, :64].astype(np.float32), progress=False)
    np.testing.assert_array_equal(widget.viewer.layers["wf dehazed"].data, expected.mean)


def test_3d_layer_from_a_file_equals_the_cli_on_that_file(qtbot, widget, widefield, trained_run, tmp_path):
    stack = np.stack([widefield[:64, :64], widefield[64:128, :64], widefield[:64, 64:128]])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    [layer] = widget.viewer.open(str(path), plugin="napari")
    _run(qtbot, widget, layer.name)
    cli_main(
        ["predict", "--model", str(trained_run), "--input", str(path), "--output", str(tmp_path / "out" / "stack.tif")]
        + ["--samples", "2", "--steps", "2", "--seed", "3", "--quiet", "--device", "cpu"]
    )
    np.testing.assert_array_equal(
        widget.viewer.layers[f"{layer.name} dehazed"].data, tifffile.imread(tmp_path / "out" / "stack.tif")
    )
    np.testing.assert_array_equal(
        widget.viewer.layers[f"{layer.name} std"].data, tifffile.imread(tmp_path / "out" / "stack_std.tif")
    )


def test_cancel_leaves_no_layer_and_the_widget_usable(qtbot, widget, widefield):
    widget.viewer.add_image(np.stack([widefield[:64, :64]] * 3), name="zs")
    widget.steps.setValue(60)
    widget.samples.setValue(4)
    widget.layer.setCurrentText("zs")
    widget.start()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert [layer.name for layer in widget.viewer.layers] == ["zs"]
    assert "cancelled" in widget.status.text() and widget.dehaze_button.isEnabled()
    widget.steps.setValue(1)
    _run(qtbot, widget, "zs")
    assert "zs dehazed" in widget.viewer.layers and widget.viewer.layers["zs dehazed"].data.shape == (3, 64, 64)


def test_exported_package_gives_bioimageio_predict_numbers(qtbot, widget, widefield, trained_run, tmp_path):
    package = tmp_path / "model.zip"
    cli_main(
        ["export", "--model", str(trained_run), "--output", str(package), "--samples", "2", "--steps", "2"]
        + ["--test-size", "96"]
    )
    image = widefield[:100, :132]
    tifffile.imwrite(tmp_path / "img.tif", image)
    result = subprocess.run(
        [sys.executable, "-m", "bioimageio.core", "predict", "--inputs", str(tmp_path / "img.tif")]
        + ["--outputs", str(tmp_path / "out" / "{output_id}.tif"), str(package)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reference = np.squeeze(tifffile.imread(tmp_path / "out" / "dehazed.tif"))
    widget.model_path.setText(str(package))
    assert widget.load_model(), widget.status.text()
    assert not widget.samples.isEnabled()  # the package's settings are baked in
    widget.viewer.add_image(image, name="img")
    _run(qtbot, widget, "img")
    for layer, channel in (("img dehazed", 0), ("img std", 1)):
        got = widget.viewer.layers[layer].data
        assert np.abs(got - reference[channel]).max() <= 1e-4 * np.abs(reference[channel]).max()


def test_bad_input_is_a_message_not_a_trace(qtbot, widget, widefield, tmp_path):
    viewer = widget.viewer
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="rgb", rgb=True)
    viewer.add_labels(np.zeros((64, 64), np.int32), name="labels")
    viewer.add_image(widefield[:8, :8], name="tiny")
    nan = widefield[:64, :64].astype(np.float32)
    nan[3, 4] = np.nan
    viewer.add_image(nan, name="nan")
    layers = len(viewer.layers)
    for name, message in (
        ("rgb", "RGB"),
        ("labels", "labels layer cannot be dehazed"),
        ("tiny", "at least 16 x 16"),
        ("nan", "NaN"),
    ):
        _run(qtbot, widget, name)
        assert message in widget.status.text(), (name, widget.status.text())
        assert len(viewer.layers) == layers
    not_a_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(not_a_zip, "w") as zf:
        zf.writestr("rdf.yaml", "type: model\n")
    for path, message in ((tmp_path, "config.json"), (not_a_zip, "not a bioimage.io package exported by HazeMatching")):
        widget.model_path.setText(str(path))
        assert not widget.load_model()
        assert message in widget.status.text(), widget.status.text()
        _run(qtbot, widget, "nan")  # no model: refused before any work
        assert len(viewer.layers) == layers

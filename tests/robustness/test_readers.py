"""Robustness cases 3, 6 and 7 (../shared/robustness): one reader for every file the CLI takes.
Size-1 axes are dropped wherever they stand; a plain multi-page file's pages can be described in any
T/Z/C order with sizes; a file with several image series is refused with its series listed, never
dehazed in part."""

import json

import numpy as np
import pytest
import tifffile

from hazematching.cli import main as cli_main
from hazematching.data.io import read_split
from hazematching.data.stack import open_stack
from hazematching.inference.experiment import MANIFEST_NAME, derive_seed
from hazematching.inference.predict import predict_array
from hazematching.run import load_model

FLAGS = ["--samples", "2", "--steps", "2", "--quiet"]


def _planes(sim_data, count, size=64):
    images = [p.input for p in read_split(sim_data / "train")]
    return np.stack([images[i % len(images)][:size, :size] for i in range(count)]).astype(np.uint16)


def _predict(run, src, out, *extra):
    cli_main(["predict", "--model", str(run), "--input", str(src), "--output", str(out), *FLAGS, *extra])


@pytest.mark.parametrize("layout", ["YX1", "1YX", "Y1X", "Y1X zlib", "ome TZCYX 11164"])
def test_size_one_axes_are_dropped_wherever_they_stand(trained_run, sim_data, tmp_path, layout):
    plane = _planes(sim_data, 1)[0]
    if layout.startswith("ome"):  # an OME-TIFF recording T, Z and C of size 1 before YX
        tifffile.imwrite(tmp_path / "in.tif", plane.reshape(1, 1, 1, 64, 64), ome=True, metadata={"axes": "TZCYX"})
    else:  # Y1X: tifffile stores 64 pages of (1, 64); zlib: no contiguous pixel data to read by offset
        data = plane.reshape([1 if c == "1" else 64 for c in layout.split()[0]])
        compression = layout.split()[1] if " " in layout else None
        tifffile.imwrite(tmp_path / "in.tif", data, photometric="minisblack", compression=compression)
    assert open_stack(tmp_path / "in.tif").axes == "YX"
    _predict(trained_run, tmp_path / "in.tif", tmp_path / "out.tif")
    _predict(trained_run, tmp_path / "in.tif", tmp_path / "out_yx.tif", "--axes", "YX")
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == (64, 64) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, tifffile.imread(tmp_path / "out_yx.tif"))


@pytest.mark.parametrize("shape,axes,named", [((64, 64, 1), "ZYX", "X"), ((64, 1, 64), "ZYX", "Y")])
def test_axes_naming_a_size_one_axis_as_y_or_x_are_refused(trained_run, sim_data, tmp_path, shape, axes, named):
    """``--axes ZYX`` on a (64, 64, 1) file used to drop X's axis and write ZY planes under a corrupt
    ImageJ header; it names the axis and the fix instead, and writes nothing."""
    tifffile.imwrite(tmp_path / "in.tif", _planes(sim_data, 1)[0].reshape(shape), photometric="minisblack")
    with pytest.raises(SystemExit) as stopped:
        _predict(trained_run, tmp_path / "in.tif", tmp_path / "out.tif", "--axes", axes)
    message = str(stopped.value.code)
    assert f"puts {named} on an axis of size 1 of shape {shape}" in message and "e.g. --axes YX" in message
    assert "in.tif" in message and not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("axes,z_of,c_of", [("Z3C2YX", lambda p: p // 2, lambda p: p % 2), ("C2ZYX", None, None)])
def test_plain_pages_described_in_any_order_with_sizes(trained_run, sim_data, tmp_path, axes, z_of, c_of):
    pages = _planes(sim_data, 6)
    tifffile.imwrite(tmp_path / "zc.tif", pages, photometric="minisblack")
    _predict(trained_run, tmp_path / "zc.tif", tmp_path / "out.tif", "--axes", axes, "--channel", "1")
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == (3, 64, 64)
    page = 2 * 2 + 1 if axes.startswith("Z") else 1 * 3 + 2  # z = 2 of channel 1
    expected = predict_array(
        load_model(trained_run), pages[page].astype(np.float32), samples=2, steps=2, progress=False,
        seed=derive_seed(0, "zc.tif", 2),
    )  # fmt: skip
    np.testing.assert_array_equal(out[2], expected.mean)


def test_plain_pages_without_sizes_get_an_example_that_fits(trained_run, sim_data, tmp_path):
    tifffile.imwrite(tmp_path / "zc.tif", _planes(sim_data, 6), photometric="minisblack")
    with pytest.raises(SystemExit) as stopped:
        _predict(trained_run, tmp_path / "zc.tif", tmp_path / "out.tif", "--axes", "ZCYX", "--channel", "1")
    assert "give the size of every leading axis but one, e.g. --axes Z3C2YX" in str(stopped.value.code)
    assert not (tmp_path / "out.tif").exists()


def test_several_series_are_refused_never_dropped(trained_run, sim_data, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    planes = _planes(sim_data, 5)
    with tifffile.TiffWriter(src / "two_series.ome.tif", ome=True) as tw:
        tw.write(planes[:3], metadata={"axes": "ZYX"})
        tw.write(planes[3:, :48, :], metadata={"axes": "ZYX"})
    tifffile.imwrite(src / "single.tif", planes[:2], imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(SystemExit):  # a folder with a failed file ends with status 1
        _predict(trained_run, src, tmp_path / "out")
    summary = capsys.readouterr().out
    assert (
        "FAILED two_series.ome.tif: " in summary
        and "holds 2 image series (ZYX (3, 64, 64), ZYX (2, 48, 64))" in summary
    )
    files = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    assert files["two_series.ome.tif"]["status"] == "failed" and files["single.tif"]["status"] == "complete"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["single.tif", "single_std.tif"]


def test_a_folder_mixing_paired_and_single_channel_files_runs_with_one_channel_flag(trained_run, sim_data, tmp_path):
    """--channel picks the widefield channel of the paired files; a single-channel file in the same
    folder is dehazed as it is, with a warning naming it (it used to fail)."""
    pair = read_split(sim_data / "test")[0]
    src = tmp_path / "mixed"
    src.mkdir()
    tifffile.imwrite(src / "paired.tif", np.stack([pair.target, pair.input]), metadata={"axes": "CYX"})
    tifffile.imwrite(src / "single.tif", pair.input)
    _predict(trained_run, src, tmp_path / "out", "--channel", "1", "--noise", "package")  # same noise for both
    files = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    assert {name: entry["status"] for name, entry in files.items()} == {
        "paired.tif": "complete",
        "single.tif": "complete",
    }
    assert "one channel, dehazed as it is" in files["single.tif"]["warning"]
    paired, single = (tifffile.imread(tmp_path / "out" / name) for name in ("paired.tif", "single.tif"))
    np.testing.assert_array_equal(paired, single)
    with pytest.raises(SystemExit, match="has one channel"):  # a single file asked for a channel it lacks
        _predict(trained_run, src / "single.tif", tmp_path / "alone.tif", "--channel", "1")


@pytest.mark.parametrize("channels,axes", [(2, None), (2, "YXC"), (3, "YXC")])
def test_channels_last_plain_files_are_read_as_training_reads_pairs(trained_run, sim_data, tmp_path, channels, axes):
    """A pair saved as (Y, X, 2) trains (data.md: CYX or YXC) and now predicts too: the small last axis
    is channels (by itself, or with --axes YXC); --axes CYX on it names the fix."""
    planes = _planes(sim_data, channels)
    tifffile.imwrite(tmp_path / "yxc.tif", np.moveaxis(planes, 0, -1), photometric="minisblack")
    extra = ["--axes", axes] if axes else []
    _predict(trained_run, tmp_path / "yxc.tif", tmp_path / "out.tif", "--channel", "1", "--noise", "package", *extra)
    tifffile.imwrite(tmp_path / "plane.tif", planes[1])
    _predict(trained_run, tmp_path / "plane.tif", tmp_path / "plane_out.tif", "--noise", "package")
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == (64, 64)
    np.testing.assert_array_equal(out, tifffile.imread(tmp_path / "plane_out.tif"))
    with pytest.raises(SystemExit) as stopped:
        _predict(trained_run, tmp_path / "yxc.tif", tmp_path / "bad.tif", "--channel", "1", "--axes", "CYX")
    assert "looks like channels: --axes YXC" in str(stopped.value.code) and not (tmp_path / "bad.tif").exists()

"""N-D TIFF planes: every layout reads the planes tifffile reads, outputs keep axes and calibration."""

import numpy as np
import pytest
import tifffile

from hazematching.data.io import DataError
from hazematching.data.stack import PlaneReader, PlaneWriter, create_output, open_stack, output_kind

STACK = (np.arange(2 * 3 * 40 * 50) % 997).astype(np.uint16).reshape(2, 3, 40, 50)


def _planes(info):
    with PlaneReader(info) as reader:
        return np.stack([reader.read(p) for p in range(info.planes)])


@pytest.mark.parametrize(
    "name, write, axes, kind, contiguous",
    [
        ("ij.tif", dict(imagej=True, metadata={"axes": "TZYX"}), None, "imagej", True),
        ("ome.tif", dict(ome=True, metadata={"axes": "TZYX"}), None, "ome", True),
        ("zlib.ome.tif", dict(ome=True, compression="zlib", metadata={"axes": "TZYX"}), None, "ome", False),
        ("planar.tif", dict(photometric="rgb", planarconfig="separate"), "TZYX", "plain", True),  # 2 pages of 3 samples
        ("pages.tif", dict(photometric="minisblack", metadata=None), "ZYX", "plain", True),  # 6 pages, no shape
        ("tiled.tif", dict(photometric="minisblack", tile=(16, 16), metadata=None), "ZYX", "plain", False),
    ],
)
def test_every_layout_reads_the_planes_in_order(tmp_path, name, write, axes, kind, contiguous):
    path = tmp_path / name
    tifffile.imwrite(path, STACK, **write)
    info = open_stack(path, axes=axes)
    expected = ("ZYX", (6, 40, 50)) if axes == "ZYX" else ("TZYX", STACK.shape)
    assert (info.axes, info.shape, info.planes, info.kind) == (*expected, 6, kind)
    assert (info.offset is not None) == contiguous
    np.testing.assert_array_equal(_planes(info), STACK.reshape(6, 40, 50).astype(np.float32))


def test_channel_axis_picks_one_channel_in_any_position(tmp_path):
    data = (np.arange(3 * 2 * 4 * 40 * 50) % 1000).astype(np.uint16).reshape(3, 2, 4, 40, 50)  # TZCYX
    tifffile.imwrite(tmp_path / "a.tif", data, imagej=True, metadata={"axes": "TZCYX"})
    info = open_stack(tmp_path / "a.tif", channel=2)
    assert (info.out_axes, info.out_shape, info.planes) == ("TZYX", (3, 2, 40, 50), 6)
    np.testing.assert_array_equal(_planes(info), data[:, :, 2].reshape(6, 40, 50))
    with pytest.raises(DataError, match="has 4 channels .*--channel"):
        open_stack(tmp_path / "a.tif")
    with pytest.raises(DataError, match="--channel 4 requested .* 4 channel"):
        open_stack(tmp_path / "a.tif", channel=4)


def test_unknown_or_wrong_axes_are_explained(tmp_path):
    tifffile.imwrite(tmp_path / "q.tif", STACK[0], photometric="minisblack")  # plain 3D: what is the first axis?
    with pytest.raises(DataError, match="unknown axes .*pass --axes"):
        open_stack(tmp_path / "q.tif")
    assert open_stack(tmp_path / "q.tif", axes="zyx").axes == "ZYX"
    # pages of a plain file can be several axes, but only with sizes that say how
    with pytest.raises(DataError, match=r"--axes TZYX: the file's 3 pages do not say how they divide among T, Z"):
        open_stack(tmp_path / "q.tif", axes="TZYX")
    assert open_stack(tmp_path / "q.tif", axes="T3ZYX").shape[:2] == (3, 1)
    tifffile.imwrite(tmp_path / "ij.tif", STACK[0], imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(DataError, match="--axes TZYX names 4 axes but the image has shape"):
        open_stack(tmp_path / "ij.tif", axes="TZYX")
    for bad in ("ZYXQ", "ZZYX", "YXZ", "ABC"):
        with pytest.raises(DataError, match="--axes"):
            open_stack(tmp_path / "q.tif", axes=bad)
    tifffile.imwrite(tmp_path / "small.tif", STACK[0, :, :8], imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(DataError, match="8 x 50 are smaller than the minimum 16 x 16"):
        open_stack(tmp_path / "small.tif")


def test_truncated_files_are_caught_before_any_work(tmp_path):
    for name, options in (("c.tif", dict(imagej=True)), ("z.tif", dict(ome=True, compression="zlib"))):
        path = tmp_path / name
        tifffile.imwrite(
            path,
            (np.random.default_rng(0).random((4, 64, 64)) * 1000).astype(np.uint16),
            metadata={"axes": "ZYX"},
            **options,
        )
        data = path.read_bytes()
        cut = len(data) // 2 if name == "c.tif" else len(data) - 100  # OME-XML sits at the start, pixels after
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match="truncated|cannot be read"):
            open_stack(path)


@pytest.mark.parametrize(
    "kind, write",
    [
        (
            "imagej",
            dict(
                imagej=True,
                resolution=(1 / 0.1, 1 / 0.1),
                metadata={"axes": "TZYX", "spacing": 0.5, "unit": "um", "finterval": 2.0},
            ),
        ),
        (
            "ome",
            dict(
                ome=True,
                metadata={
                    "axes": "TZYX",
                    "PhysicalSizeX": 0.1,
                    "PhysicalSizeY": 0.1,
                    "PhysicalSizeZ": 0.5,
                    "TimeIncrement": 2.0,
                },
            ),
        ),
    ],
)
def test_outputs_keep_axes_and_calibration(tmp_path, kind, write):
    tifffile.imwrite(tmp_path / "in.tif", STACK, **write)
    info = open_stack(tmp_path / "in.tif")
    assert (info.pixel_sizes.x, info.pixel_sizes.z, info.pixel_sizes.unit, info.pixel_sizes.time_interval) == (
        0.1,
        0.5,
        "µm",
        2.0,
    )
    out = tmp_path / "out.tif"
    writer = PlaneWriter(out, create_output(out, info, info.out_axes, info.out_shape), info.plane_shape)
    planes = np.random.default_rng(1).random((6, 40, 50)).astype(np.float32)
    for p in (5, 0, 3, 1, 2, 4):  # any order, as several processes would
        writer.write(p, planes[p])
    writer.close()
    back = open_stack(out)
    assert (back.kind, back.axes, back.shape, back.pixel_sizes) == (kind, "TZYX", STACK.shape, info.pixel_sizes)
    np.testing.assert_array_equal(tifffile.imread(out), planes.reshape(STACK.shape))


def test_axes_imagej_cannot_hold_are_written_as_ome(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", STACK, photometric="minisblack", metadata={"axes": "ZTYX"})
    info = open_stack(tmp_path / "in.tif")
    assert info.axes == "ZTYX" and output_kind(info, info.out_axes) == "ome"
    out = tmp_path / "samples.tif"
    create_output(out, info, "ZTCYX", (2, 3, 4, 40, 50))
    assert open_stack(out, channel=0).axes == "ZTCYX"

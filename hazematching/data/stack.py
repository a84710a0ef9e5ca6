"""N-D image stacks read and written one 2D YX plane at a time, whatever their storage format:
TIFF (``tiff``: ImageJ hyperstacks, OME-TIFF, plain TIFF) or OME-Zarr (``omezarr``), each a
``layout.StackFormat``; this module picks the format of a path and is what callers use.

Why plane by plane: an experiment's stack can be larger than RAM while the method is 2D. Outputs are
created up front with their final shape and metadata in the input's format, so that any process can
write any plane and nothing but the plane being processed is ever held in memory.
"""

from pathlib import Path

import numpy as np

from hazematching.data.io import DataError
from hazematching.data.layout import (
    KNOWN_AXES,
    PixelSizes,
    SingleChannelError,
    StackFormat,
    StackInfo,
    parse_axes,
    split_axes,
)
from hazematching.data.omezarr import OmeZarrFormat
from hazematching.data.tiff import PlaneWriter, TiffFormat, output_kind

__all__ = [  # the formats' shared names, for callers of this module
    "KNOWN_AXES", "PixelSizes", "PlaneWriter", "SingleChannelError", "StackInfo", "output_kind", "parse_axes",
    "split_axes",
]  # fmt: skip

FORMATS: tuple[StackFormat, ...] = (OmeZarrFormat(), TiffFormat())


def open_stack(path: Path, axes: str | None = None, channel: int | None = None, min_size: int = 16) -> StackInfo:
    """Read the layout of one image (no pixels) and check everything that can be checked up front:
    readable, known axes, the channel present, planes at least ``min_size`` wide, no truncation."""
    path = Path(path)
    storage = next((f for f in FORMATS if f.claims(path)), None)
    if storage is None:
        raise DataError(f"{path}: not a TIFF file (expected suffix .tif/.tiff) or an OME-Zarr image (.zarr)")
    return storage.open(path, axes, channel, min_size)


class PlaneReader:
    """Reads single planes of one stack as float32, whatever its format; keeps it open until ``close``."""

    def __init__(self, info: StackInfo):
        self.info = info
        self._raw = info.storage.raw_reader(info)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._raw.close()

    def read(self, plane: int) -> np.ndarray:
        info = self.info
        try:
            array = self._raw.read_raw(plane)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{info.path}: plane {plane} cannot be read ({type(exc).__name__}: {exc})") from exc
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise DataError(f"{info.path}: plane {plane} contains NaN/Inf pixels; clean or mask the image first")
        return array


def create_output(path: Path, info: StackInfo, axes: str, shape: tuple[int, ...], description: str = "") -> int:
    """An empty float32 output of ``shape`` in the input's format, with its calibration; returns what
    ``open_writer`` needs (a TIFF's pixel data offset; 0 for OME-Zarr, which addresses planes by index)."""
    return info.storage.create_output(path, info, axes, shape, description)


def open_writer(path: Path, info: StackInfo, offset: int, samples: int | None = None):
    """A writer with ``write_plane``/``sync``/``close`` for an output made by ``create_output``."""
    return info.storage.writer(path, info, offset, samples)


def output_suffix(info: StackInfo) -> str:
    return info.storage.suffix


def describe(info: StackInfo) -> str:
    return f"{info.path.name}: axes {info.axes}, shape {info.shape}, {info.planes} plane(s)" + (
        f", channel {info.channel}" if info.channel is not None else ""
    )

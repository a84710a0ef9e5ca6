"""What every storage format of N-D images shares: the layout of one input (``StackInfo``), the
``--axes`` grammar, the channel and plane checks, and the interface a format implements
(``StackFormat``: TIFF in ``tiff``, OME-Zarr in ``omezarr``; ``stack`` chooses between them)."""

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from hazematching.data.io import DataError

KNOWN_AXES = "TZCYX"  # time, depth, channel and the plane; ImageJ's order
_UNIT_ALIASES = {"micron": "µm", "microns": "µm", "um": "µm", "\\u00B5m": "µm", "μm": "µm", "nanometer": "nm"}


@dataclass(frozen=True)
class PixelSizes:
    """Physical calibration carried from input to output (None: not recorded in the input)."""

    x: float | None = None
    y: float | None = None
    z: float | None = None
    unit: str | None = None  # of x, y, z, e.g. "µm"
    time_interval: float | None = None
    time_unit: str | None = None


@dataclass(frozen=True)
class StackInfo:
    """Where the planes of one input are and what the outputs look like."""

    path: Path
    kind: str  # "imagej", "ome", "plain" or "ome-zarr": the output is written in the same kind where it can be
    axes: str  # of the stored series, singleton axes dropped, e.g. "TZCYX"
    shape: tuple[int, ...]
    dtype: np.dtype  # including the file's byte order
    channel: int | None  # the dehazed index along C; None when there is no C axis
    pixel_sizes: PixelSizes = field(default_factory=PixelSizes)
    offset: int | None = None  # start of contiguous uncompressed pixel data, else None
    per_page: int = 1  # planes stored in one TIFF page; -n: one plane stored in n consecutive pages
    channel_last: bool = False  # a plain (Y, X, C) file: planes are read from the whole array
    ngff: object | None = None  # OME-Zarr only: its ``omezarr.NgffImage``
    storage: "StackFormat | None" = field(default=None, compare=False)  # the format that opened it

    @property
    def out_axes(self) -> str:
        return self.axes.replace("C", "")

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(n for a, n in zip(self.axes, self.shape) if a != "C")

    def output_layout(self, samples: int | None = None) -> tuple[str, tuple[int, ...]]:
        """Axes and shape of an output: one value per input plane, or ``samples`` values as a C axis."""
        if samples is None:
            return self.out_axes, self.out_shape
        axes = self.storage.samples_axes(self.out_axes)
        sizes = dict(zip(self.out_axes, self.out_shape), C=samples)
        return axes, tuple(sizes[a] for a in axes)

    @property
    def planes(self) -> int:
        return math.prod(self.out_shape[:-2])

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    def stored_index(self, plane: int) -> int:
        """Index among all stored planes (C order over the non-YX axes) of output plane ``plane``."""
        index = [int(i) for i in np.unravel_index(plane, self.out_shape[:-2])]
        if self.channel is not None:
            index.insert(self.axes.index("C"), self.channel)
        return int(np.ravel_multi_index(index, self.shape[:-2])) if index else 0


class RawPlaneReader(Protocol):
    def read_raw(self, plane: int) -> np.ndarray:
        """Output plane ``plane`` (its channel picked) in the file's dtype."""

    def close(self) -> None: ...


class PlaneWriting(Protocol):
    def write_plane(self, plane: int, data: np.ndarray) -> None:
        """Output plane ``plane``: (Y, X), or (K, Y, X) for an output with K values per plane."""

    def sync(self) -> None: ...

    def close(self) -> None: ...


class StackFormat:
    """One storage format: how an input's layout is read (no pixels), its planes read, and an output
    of the same format created up front and then filled plane by plane (by any process)."""

    suffix = ""  # of outputs

    def claims(self, path: Path) -> bool:
        raise NotImplementedError

    def open(self, path: Path, axes: str | None, channel: int | None, min_size: int) -> StackInfo:
        raise NotImplementedError

    def raw_reader(self, info: StackInfo) -> RawPlaneReader:
        raise NotImplementedError

    def samples_axes(self, out_axes: str) -> str:
        """Axes of an output holding K samples per plane as a C axis (TIFF: just before YX)."""
        return out_axes[:-2] + "CYX"

    def create_output(self, path: Path, info: StackInfo, axes: str, shape: tuple[int, ...], description: str) -> int:
        """An empty output; returns what ``writer`` needs to address its planes (a byte offset, or 0)."""
        raise NotImplementedError

    def writer(self, path: Path, info: StackInfo, offset: int, samples: int | None) -> PlaneWriting:
        raise NotImplementedError


def normalize_unit(unit) -> str | None:
    if not unit:
        return None
    unit = str(unit).strip()
    return _UNIT_ALIASES.get(unit.lower(), _UNIT_ALIASES.get(unit, unit))


def parse_axes(axes: str) -> str:
    """Check an ``--axes`` string such as TZYX, or Z3C2YX (sizes for a plain multi-page TIFF, whose pages
    carry no axes: 3 z-planes of 2 interleaved channels); returned upper-case, as given."""
    axes = axes.strip().upper()
    split_axes(axes)
    return axes


def split_axes(axes: str) -> tuple[str, dict[str, int]]:
    """'Z3C2YX' -> ('ZCYX', {'Z': 3, 'C': 2}); raises DataError for anything but distinct letters from
    TZCYX ending in YX, each leading letter optionally followed by its size, or YXC (channels last)."""
    if axes.strip().upper() == "YXC":
        return "YXC", {}

    parts = re.findall(r"([A-Z])(\d*)", axes.strip().upper())
    letters = "".join(letter for letter, _ in parts)
    bad = sorted(set(letters) - set(KNOWN_AXES))
    well_formed = "".join(letter + size for letter, size in parts) == axes.strip().upper()
    sizes = {letter: int(size) for letter, size in parts if size}
    if (
        bad
        or not well_formed
        or len(set(letters)) != len(letters)
        or not letters.endswith("YX")
        or {"Y", "X"} & set(sizes)
        or any(n < 1 for n in sizes.values())
    ):
        raise DataError(
            f"--axes {axes!r}: expected distinct letters from {KNOWN_AXES} ending in YX, e.g. TZYX or ZCYX, or YXC "
            "(channels last); for a plain multi-page TIFF the sizes of the leading axes may follow their letters, "
            "e.g. Z3C2YX" + (f" (unknown: {''.join(bad)})" if bad else "")
        )
    return letters, sizes


class SingleChannelError(DataError):
    """``--channel`` asked of a file with one channel (in a folder that mixes paired and single files,
    the experiment runner dehazes that file as it is and says so)."""


def check_plane_and_channel(path: Path, file_axes: str, shape: tuple, channel: int | None, min_size: int) -> int | None:
    """Planes at least ``min_size`` wide, the requested channel present; returns the channel index
    (None without a C axis)."""
    if min(shape[-2:]) < min_size:
        raise DataError(
            f"{path}: YX planes of {shape[-2]} x {shape[-1]} are smaller than the minimum {min_size} x {min_size}"
        )
    if "C" in file_axes:
        channels = shape[file_axes.index("C")]
        if channel is None and channels > 1:
            raise DataError(
                f"{path}: has {channels} channels (axes {file_axes}); pick the one the model was trained "
                "for with --channel C, counted from 0 (Fiji's channel 2 is --channel 1; --channel 1 is the widefield "
                "channel of paired files)"
            )
        if channel is not None and not 0 <= channel < channels:
            raise DataError(
                f"{path}: --channel {channel} requested but the image (axes {file_axes}, shape {shape}) has "
                f"{channels} channel(s), numbered from 0"
            )
        channel = channel or 0
    elif channel not in (None, 0):
        raise SingleChannelError(
            f"{path}: --channel {channel} requested but the image (axes {file_axes}, shape {shape}) has one channel"
        )
    else:
        channel = None
    return channel


def axes_example(count: int) -> str:
    """An --axes value with ``count`` letters, for messages."""
    return "TZYX"[-count:] if count <= 4 else "TZCYX"

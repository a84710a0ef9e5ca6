"""N-D TIFF stacks (ImageJ hyperstacks, OME-TIFF, plain TIFF) read and written one 2D YX plane at a time;
OME-Zarr images go through the same functions (``omezarr`` holds their format).

Why plane by plane: an experiment's stack can be larger than RAM while the method is 2D. Reading
follows the file's layout (uncompressed contiguous pixels: one positioned read per plane; otherwise
one TIFF page decoded at a time). Outputs are uncompressed float32 files created up front with their
final shape and metadata, so that any process can write any plane at its byte offset (``os.pwrite``)
and nothing but the plane being processed is ever held in memory.
"""

import errno
import logging
import math
import os
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from hazematching.data import omezarr
from hazematching.data.io import SUPPORTED_DTYPES, DataError, is_tiff

KNOWN_AXES = "TZCYX"  # time, depth, channel and the plane; ImageJ's order
_UNIT_ALIASES = {"micron": "µm", "microns": "µm", "um": "µm", "\\u00B5m": "µm", "μm": "µm", "nanometer": "nm"}
_INCH_UM, _CM_UM = 25400.0, 10000.0


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
    ngff: omezarr.NgffImage | None = None  # OME-Zarr only

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
        if self.kind == "ome-zarr":
            axes = omezarr.out_letters(self.axes, samples=True)
            sizes = dict(zip(self.out_axes, self.out_shape), C=samples)
            return axes, tuple(sizes[a] for a in axes)
        return self.out_axes[:-2] + "CYX", (*self.out_shape[:-2], samples, *self.out_shape[-2:])

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


def _normalize_unit(unit) -> str | None:
    if not unit:
        return None
    unit = str(unit).strip()
    return _UNIT_ALIASES.get(unit.lower(), _UNIT_ALIASES.get(unit, unit))


def _resolution(page) -> tuple[float | None, float | None]:
    """Pixel sizes (1 / resolution) from the X/YResolution tags, None when absent or zero."""
    sizes = []
    for name in ("XResolution", "YResolution"):
        tag = page.tags.get(name)
        num, den = tag.value if tag is not None else (0, 1)
        sizes.append(den / num if num and den else None)
    return sizes[0], sizes[1]


def _ome_pixel_sizes(xml: str) -> PixelSizes:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return PixelSizes()
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
    if pixels is None:
        return PixelSizes()
    get = lambda key: float(pixels.get(key)) if pixels.get(key) else None  # noqa: E731
    unit = pixels.get("PhysicalSizeXUnit", "µm") if pixels.get("PhysicalSizeX") else None
    t = get("TimeIncrement")
    return PixelSizes(
        get("PhysicalSizeX"),
        get("PhysicalSizeY"),
        get("PhysicalSizeZ"),
        _normalize_unit(unit),
        t,
        pixels.get("TimeIncrementUnit", "s") if t is not None else None,
    )


def _pixel_sizes(tif: tifffile.TiffFile, kind: str) -> PixelSizes:
    page = tif.pages.first
    x, y = _resolution(page)
    if kind == "ome":
        return _ome_pixel_sizes(tif.ome_metadata or "")
    if kind == "imagej":
        meta = tif.imagej_metadata or {}
        unit = _normalize_unit(meta.get("unit")) if x is not None else None
        t = meta.get("finterval")
        return PixelSizes(x, y, meta.get("spacing"), unit, t, meta.get("tunit", "s") if t else None)
    res_unit = page.tags.get("ResolutionUnit")
    res_unit = int(res_unit.value) if res_unit is not None else 2
    if x is None or res_unit not in (2, 3):  # no calibration, or unitless
        return PixelSizes(x, y)
    scale = _INCH_UM if res_unit == 2 else _CM_UM
    return PixelSizes(x * scale, y * scale if y else None, unit="µm")


def parse_axes(axes: str) -> str:
    """Check an ``--axes`` string such as TZYX, or Z3C2YX (sizes for a plain multi-page TIFF, whose pages
    carry no axes: 3 z-planes of 2 interleaved channels); returned upper-case, as given."""
    axes = axes.strip().upper()
    split_axes(axes)
    return axes


def split_axes(axes: str) -> tuple[str, dict[str, int]]:
    """'Z3C2YX' -> ('ZCYX', {'Z': 3, 'C': 2}); raises DataError for anything but distinct letters from
    TZCYX ending in YX, each leading letter optionally followed by its size, or YXC (channels last)."""
    import re

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


def _check_plane_and_channel(
    path: Path, file_axes: str, shape: tuple, channel: int | None, min_size: int
) -> int | None:
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


def _axes_example(count: int) -> str:
    """An --axes value with ``count`` letters, for messages."""
    return "TZYX"[-count:] if count <= 4 else "TZCYX"


def _unfold_pages(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a plain file's N pages read as the leading axes of ``axes`` (C order, e.g. Z3C2YX):
    the sizes given, the one left out computed from N."""
    letters, sizes = split_axes(axes)
    pages, lead = shape[0], letters[:-2]
    missing = [a for a in lead if a not in sizes]
    known = math.prod(sizes.values())
    if pages % known or (not missing and known != pages):
        raise DataError(f"{path}: --axes {axes}: the sizes given (product {known}) do not fit the file's {pages} pages")
    if len(missing) > 1:
        example = {a: 1 for a in missing[1:-1]} | ({missing[-1]: 2} if (pages // known) % 2 == 0 else {})
        example[missing[0]] = pages // (known * math.prod(example.values()))
        example = "".join(f"{a}{sizes.get(a, example.get(a, 1))}" for a in lead) + "YX"
        raise DataError(
            f"{path}: --axes {axes}: the file's {pages} pages do not say how they divide among {', '.join(missing)}; "
            f"give the size of every leading axis but one, e.g. --axes {example}"
        )
    if missing:
        sizes = {**sizes, missing[0]: pages // known}
    return (*[sizes[a] for a in lead], *shape[-2:])


def open_stack(path: Path, axes: str | None = None, channel: int | None = None, min_size: int = 16) -> StackInfo:
    """Read the layout of one TIFF (no pixels) and check everything that can be checked up front:
    readable, known axes, the channel present, planes at least ``min_size`` wide, no truncation."""
    path = Path(path)
    if omezarr.is_zarr(path):
        return _open_ome_zarr(path, axes, channel, min_size)
    if not is_tiff(path):
        raise DataError(f"{path}: not a TIFF file (expected suffix .tif/.tiff)")
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    quiet = logging.getLogger("tifffile")
    level, quiet.level = quiet.level, logging.CRITICAL  # its log lines would repeat the error reported below
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) > 1:  # never dehaze one series and drop the others without a word
                found = ", ".join(f"{s.axes} {tuple(s.shape)}" for s in tif.series[:4])
                raise DataError(
                    f"{path}: holds {len(tif.series)} image series ({found}); HazeMatching reads one series per "
                    "file: save each series as its own file (Fiji: Bio-Formats with 'Open all series', then save "
                    "each; Python: tifffile.TiffFile(path).series[i].asarray())"
                )
            series = tif.series[0]
            kind = "ome" if tif.is_ome else "imagej" if tif.is_imagej else "plain"
            stored_axes, shape = series.axes, tuple(series.shape)
            dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
            keyframe = series.keyframe
            pages = series.pages
            num_pages = len(pages)
            ends = [
                max((o + n for o, n in zip(p.dataoffsets, p.databytecounts)), default=0) for p in pages if p is not None
            ]
            offset = series.dataoffset
            pixel_sizes = _pixel_sizes(tif, kind)
            page_shape = tuple(keyframe.shape)
            # a cut-off file loses its last pages silently: compare with what the metadata promise
            promised = (tif.imagej_metadata or {}).get("images", 1) if tif.is_imagej else None
            damaged = (tif.is_ome and series.kind != "ome") or (
                promised is not None
                and promised != math.prod(shape[:-2]) // (shape[-1] if stored_axes.endswith("S") else 1)
            )
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(f"{path}: cannot be read as TIFF ({type(exc).__name__}: {exc})") from exc
    finally:
        quiet.level = level
    if damaged:
        raise DataError(
            f"{path}: truncated or damaged: its {kind} metadata describe more planes than the file holds; "
            "copy the file again"
        )
    if dtype.type not in SUPPORTED_DTYPES:
        raise DataError(f"{path}: unsupported pixel type {dtype}; expected uint8, uint16 or float")
    if stored_axes.endswith("S") and shape[-1] in (3, 4):
        raise DataError(
            f"{path}: shape {shape} (axes {stored_axes}) is an RGB image; expected grayscale planes: save the "
            "fluorescence channel alone (Fiji: Image > Color > Split Channels, then save the widefield one), "
            "not a colour rendering of it"
        )
    size = path.stat().st_size
    nbytes = math.prod(shape) * dtype.itemsize
    if (offset is not None and offset + nbytes > size) or any(end > size for end in ends):
        raise DataError(
            f"{path}: truncated: the file has {size} bytes but its pixel data need "
            f"{(offset or 0) + nbytes if offset is not None else max(ends)}; copy the file again"
        )
    full_shape = shape
    # singleton axes carry nothing, wherever they stand (a trailing (Y, X, 1) too); Y and X stay
    yx = (
        {stored_axes.index("Y"), stored_axes.index("X")}
        if "Y" in stored_axes and "X" in stored_axes
        else {len(shape) - 2, len(shape) - 1}
    )
    relabel = kind == "plain" and any(shape[i] == 1 for i in yx) and sum(n > 1 for n in shape) >= 2
    if relabel:  # an unlabelled (64, 1, 64): tifffile's pages of (1, 64) say nothing about Y and X
        yx = set([i for i, n in enumerate(shape) if n > 1][-2:])
    keep = [i for i, n in enumerate(shape) if n > 1 or i in yx]
    stored_axes, shape = "".join(stored_axes[i] for i in keep), tuple(shape[i] for i in keep)
    if relabel:
        stored_axes = "Q" * (len(shape) - 2) + "YX"
    yxc = axes is not None and axes.strip().upper() == "YXC"
    if yxc and (kind != "plain" or len(shape) != 3):
        raise DataError(
            f"{path}: --axes YXC is for plain (Y, X, C) files that do not record their axes; this one is {kind} "
            f"with axes {stored_axes!r} and shape {full_shape}: leave --axes out"
        )
    if kind == "plain" and len(shape) == 3 and (yxc or (axes is None and shape[-1] < min_size)):
        # channels last, as training reads paired files: a last axis this small cannot be X
        shape = (shape[2], shape[0], shape[1])
        channel = _check_plane_and_channel(path, "CYX", shape, channel, min_size)
        return StackInfo(path, kind, "CYX", shape, dtype, channel, pixel_sizes, None, 1, channel_last=True)
    if axes is not None:
        given = split_axes(axes)[0]
        if len(given) == len(full_shape) and len(full_shape) != len(shape):
            dropped = "".join(given[i] for i in range(len(full_shape)) if i not in keep)
            given = "".join(given[i] for i in keep)
            if not given.endswith("YX"):
                raise DataError(
                    f"{path}: --axes {axes} puts {' and '.join(sorted(set(dropped) & set('YX')))} on an axis of size "
                    f"1 of shape {full_shape}; size-1 axes are dropped wherever they stand, so name only the "
                    f"{len(shape)} axes of size > 1, e.g. --axes {_axes_example(len(shape))}"
                )
        if len(given) > len(shape) == 3 and stored_axes[0] not in KNOWN_AXES:
            shape = _unfold_pages(path, axes, shape)  # pages of a file that does not say what they are
        if len(given) != len(shape):
            raise DataError(
                f"{path}: --axes {axes} names {len(given)} axes but the image has shape {full_shape} "
                f"({len(shape)} axes of size > 1, stored as {stored_axes!r}); give {len(shape)} letters ending in "
                f"YX, e.g. --axes {_axes_example(len(shape))}"
            )
        wrong = {a: n for a, n in split_axes(axes)[1].items() if n != shape[given.index(a)]}
        if wrong:
            raise DataError(f"{path}: --axes {axes} gives sizes {wrong}, but the image has shape {full_shape}")
        file_axes = given
    else:
        file_axes = stored_axes.replace("S", "C") if "C" not in stored_axes else stored_axes
        unknown = sorted(set(file_axes) - set(KNOWN_AXES))
        if unknown or not file_axes.endswith("YX"):
            raise DataError(
                f"{path}: unknown axes {stored_axes!r} for shape {shape}: the file does not say which "
                "axis is time, depth or channel; pass --axes, e.g. "
                + (
                    "--axes ZYX (z-planes), TYX (time points) or CYX (channels, with --channel)"
                    if len(shape) == 3
                    else f"--axes {_axes_example(len(shape))}"
                )
                + "; pages that interleave axes take sizes, e.g. --axes Z3C2YX"
            )
    if kind == "plain" and min(shape[-2:]) < min_size and 1 < full_shape[-1] < min_size <= min(full_shape[-3:-1]):
        raise DataError(
            f"{path}: --axes {axes} makes planes of {shape[-2]} x {shape[-1]} pixels, but the file's last axis "
            f"({full_shape[-1]}) looks like channels: --axes YXC (or leave --axes out)"
        )
    channel = _check_plane_and_channel(path, file_axes, shape, channel, min_size)
    plane_size, page_size = shape[-2] * shape[-1], math.prod(page_shape)
    per_page = page_size // plane_size
    # pages hold whole planes, or (a relabelled (64, 1, 64)) whole planes are runs of pages
    whole_planes = page_shape[-2:] == shape[-2:] and per_page * num_pages == math.prod(shape[:-2])
    runs = relabel and plane_size % page_size == 0 and num_pages * page_size == math.prod(shape)
    if not (whole_planes or runs):
        raise DataError(
            f"{path}: pages of shape {page_shape} do not hold whole YX planes of the series {shape}; "
            "save the stack as an ImageJ hyperstack or OME-TIFF"
        )
    if runs:
        per_page = -(plane_size // page_size)
    return StackInfo(path, kind, file_axes, shape, dtype, channel, pixel_sizes, offset, per_page)


def _open_ome_zarr(path: Path, axes: str | None, channel: int | None, min_size: int) -> StackInfo:
    """``open_stack`` for an OME-Zarr image: axes and scale from its NGFF metadata (all axes kept, so
    that outputs have the input's layout), the full-resolution level."""
    ngff, letters = omezarr.read_metadata(path)
    if axes is not None and split_axes(axes)[0] != letters:
        raise DataError(f"{path}: --axes {axes} disagrees with the image's NGFF axes {letters}; leave --axes out")
    shape, dtype = omezarr.layout(path, ngff, letters)
    channel = _check_plane_and_channel(path, letters, shape, channel, min_size)
    units = {a["name"].lower(): a.get("unit") for a in ngff.axes}
    scale = {a: omezarr.scale_of(ngff, i) for i, a in enumerate(letters)}
    sizes = PixelSizes(scale["X"], scale["Y"], scale.get("Z"), _normalize_unit(units.get("x")))
    return StackInfo(path, "ome-zarr", letters, shape, dtype, channel, sizes, ngff=ngff)


class PlaneReader:
    """Reads single planes of one stack as float32; keeps the file open until ``close``."""

    def __init__(self, info: StackInfo):
        self.info = info
        zarr = info.kind == "ome-zarr"
        self._zarr = omezarr.ZarrPlaneReader(info) if zarr else None
        self._fd = os.open(info.path, os.O_RDONLY) if info.offset is not None and not zarr else None
        self._tif = tifffile.TiffFile(info.path) if info.offset is None and not zarr else None
        self._channels_last = None  # (Y, X, C), read once on first use

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def read(self, plane: int) -> np.ndarray:
        info = self.info
        index = info.stored_index(plane)
        height, width = info.plane_shape
        try:
            if self._zarr is not None:
                array = self._zarr.read_raw(plane)
            elif info.channel_last:
                if self._channels_last is None:
                    self._channels_last = self._tif.series[0].asarray().reshape(height, width, info.shape[0])
                array = self._channels_last[:, :, index]
            elif self._fd is not None:
                nbytes = height * width * info.dtype.itemsize
                data = os.pread(self._fd, nbytes, info.offset + index * nbytes)
                if len(data) != nbytes:
                    raise DataError(f"{info.path}: truncated at plane {plane}")
                array = np.frombuffer(data, info.dtype).reshape(height, width)
            elif info.per_page < 0:
                pages = self._tif.series[0].pages[index * -info.per_page : (index + 1) * -info.per_page]
                array = np.concatenate([p.asarray().ravel() for p in pages]).reshape(height, width)
            else:
                page, within = divmod(index, info.per_page)
                array = self._tif.series[0].pages[page].asarray().reshape(info.per_page, height, width)[within]
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{info.path}: plane {plane} cannot be read ({type(exc).__name__}: {exc})") from exc
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise DataError(f"{info.path}: plane {plane} contains NaN/Inf pixels; clean or mask the image first")
        return array


def output_kind(info: StackInfo, axes: str) -> str:
    """ImageJ hyperstacks need axes in TZCYX order; anything else (and OME input) stays OME-TIFF."""
    if info.kind == "ome":
        return "ome"
    order = [KNOWN_AXES.index(a) for a in axes]
    return "imagej" if order == sorted(order) else "ome"


def _metadata(kind: str, axes: str, sizes: PixelSizes, description: str) -> dict:
    if kind == "ome":
        meta = {"axes": axes, "Description": description}
        for key, value in (("X", sizes.x), ("Y", sizes.y), ("Z", sizes.z)):
            if value is not None and (key != "Z" or "Z" in axes):
                meta[f"PhysicalSize{key}"] = value
                if sizes.unit:
                    meta[f"PhysicalSize{key}Unit"] = sizes.unit
        if sizes.time_interval is not None and "T" in axes:
            meta["TimeIncrement"] = sizes.time_interval
            meta["TimeIncrementUnit"] = sizes.time_unit or "s"
        return meta
    meta = {"axes": axes, "Info": description}
    if sizes.unit:
        meta["unit"] = "micron" if sizes.unit == "µm" else sizes.unit
    if sizes.z is not None and "Z" in axes:
        meta["spacing"] = sizes.z
    if sizes.time_interval is not None and "T" in axes:
        meta["finterval"] = sizes.time_interval
    return meta


def create_output(path: Path, info: StackInfo, axes: str, shape: tuple[int, ...], description: str = "") -> int:
    """An all-zero float32 TIFF of ``shape`` with the input's calibration; returns the byte offset of
    its (contiguous, little-endian) pixel data for ``PlaneWriter``. An OME-Zarr input gets an
    OME-Zarr output with its NGFF metadata (offset 0: zarr addresses planes by index)."""
    if info.kind == "ome-zarr":
        omezarr.create(path, info.ngff, info.axes, axes, shape, description)
        return 0
    kind = output_kind(info, axes)
    sizes = info.pixel_sizes
    resolution = None
    if sizes.x and sizes.y:
        resolution = (1.0 / sizes.x, 1.0 / sizes.y)
    options = dict(
        shape=shape, dtype="<f4", byteorder="<", returnoffset=True, metadata=_metadata(kind, axes, sizes, description)
    )
    if kind == "imagej":
        options.update(imagej=True, resolution=resolution)
    else:
        options.update(ome=True, bigtiff=math.prod(shape) * 4 > 2**31)
        if resolution is not None and sizes.unit == "µm":
            options.update(resolution=tuple(r * _CM_UM for r in resolution), resolutionunit="CENTIMETER")
    with warnings.catch_warnings():  # "truncating ImageJ file": ImageJ's own layout above 4 GB
        warnings.filterwarnings("ignore", message=".*truncating ImageJ file")
        offset, _ = tifffile.imwrite(path, **options)
    return int(offset)


class PlaneWriter:
    """Writes planes into a file made by ``create_output``, at their offsets (several processes may
    write different planes of one file at the same time)."""

    def __init__(self, path: Path, offset: int, plane_shape: tuple[int, int]):
        self.offset, self.path = offset, path
        self.nbytes = plane_shape[0] * plane_shape[1] * 4
        self._fd = os.open(path, os.O_WRONLY)

    def write(self, index: int, planes: np.ndarray) -> None:
        """``planes``: one plane or consecutive planes starting at plane ``index``."""
        data = np.ascontiguousarray(planes, dtype="<f4").tobytes()
        if os.pwrite(self._fd, data, self.offset + index * self.nbytes) != len(data):
            # a short write means the file system is full (the next write would say ENOSPC)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def write_plane(self, plane: int, data: np.ndarray) -> None:
        """Output plane ``plane``: (Y, X), or (K, Y, X) for an output with K values per plane."""
        self.write(plane * (data.shape[0] if data.ndim == 3 else 1), data)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def open_writer(path: Path, info: StackInfo, offset: int, samples: int | None = None):
    """A writer with ``write_plane``/``sync``/``close`` for an output made by ``create_output``."""
    if info.kind == "ome-zarr":
        return omezarr.ZarrPlaneWriter(path, info.ngff, info.output_layout(samples)[0])
    return PlaneWriter(path, offset, info.plane_shape)


def output_suffix(info: StackInfo) -> str:
    return ".ome.zarr" if info.kind == "ome-zarr" else ".tif"


def describe(info: StackInfo) -> str:
    return f"{info.path.name}: axes {info.axes}, shape {info.shape}, {info.planes} plane(s)" + (
        f", channel {info.channel}" if info.channel is not None else ""
    )

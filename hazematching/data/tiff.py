"""TIFF stacks (ImageJ hyperstacks, OME-TIFF, plain TIFF): layout, planes and outputs.

Reading follows the file's layout (uncompressed contiguous pixels: one positioned read per plane;
otherwise one TIFF page decoded at a time). Outputs are uncompressed float32 files created up front
with their final shape and metadata, so that any process can write any plane at its byte offset
(``os.pwrite``).
"""

import errno
import logging
import math
import os
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import tifffile

from hazematching.data.io import SUPPORTED_DTYPES, DataError, is_tiff
from hazematching.data.layout import (
    KNOWN_AXES,
    PixelSizes,
    StackFormat,
    StackInfo,
    axes_example,
    check_plane_and_channel,
    normalize_unit,
    split_axes,
)

_INCH_UM, _CM_UM = 25400.0, 10000.0


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
        normalize_unit(unit),
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
        unit = normalize_unit(meta.get("unit")) if x is not None else None
        t = meta.get("finterval")
        return PixelSizes(x, y, meta.get("spacing"), unit, t, meta.get("tunit", "s") if t else None)
    res_unit = page.tags.get("ResolutionUnit")
    res_unit = int(res_unit.value) if res_unit is not None else 2
    if x is None or res_unit not in (2, 3):  # no calibration, or unitless
        return PixelSizes(x, y)
    scale = _INCH_UM if res_unit == 2 else _CM_UM
    return PixelSizes(x * scale, y * scale if y else None, unit="µm")


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


class TiffFormat(StackFormat):
    """ImageJ hyperstacks, OME-TIFF and plain TIFF in; ImageJ or OME-TIFF out (``output_kind``)."""

    suffix = ".tif"

    def claims(self, path: Path) -> bool:
        return is_tiff(path)

    def open(self, path: Path, axes: str | None, channel: int | None, min_size: int) -> StackInfo:
        """Read the layout of one TIFF (no pixels) and check everything that can be checked up front:
        readable, known axes, the channel present, planes at least ``min_size`` wide, no truncation."""
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
                    max((o + n for o, n in zip(p.dataoffsets, p.databytecounts)), default=0)
                    for p in pages
                    if p is not None
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
            channel = check_plane_and_channel(path, "CYX", shape, channel, min_size)
            return StackInfo(path, kind, "CYX", shape, dtype, channel, pixel_sizes, None, 1, True, storage=self)
        if axes is not None:
            given = split_axes(axes)[0]
            if len(given) == len(full_shape) and len(full_shape) != len(shape):
                dropped = "".join(given[i] for i in range(len(full_shape)) if i not in keep)
                given = "".join(given[i] for i in keep)
                if not given.endswith("YX"):
                    raise DataError(
                        f"{path}: --axes {axes} puts {' and '.join(sorted(set(dropped) & set('YX')))} on an axis of "
                        f"size 1 of shape {full_shape}; size-1 axes are dropped wherever they stand, so name only the "
                        f"{len(shape)} axes of size > 1, e.g. --axes {axes_example(len(shape))}"
                    )
            if len(given) > len(shape) == 3 and stored_axes[0] not in KNOWN_AXES:
                shape = _unfold_pages(path, axes, shape)  # pages of a file that does not say what they are
            if len(given) != len(shape):
                raise DataError(
                    f"{path}: --axes {axes} names {len(given)} axes but the image has shape {full_shape} "
                    f"({len(shape)} axes of size > 1, stored as {stored_axes!r}); give {len(shape)} letters ending in "
                    f"YX, e.g. --axes {axes_example(len(shape))}"
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
                        else f"--axes {axes_example(len(shape))}"
                    )
                    + "; pages that interleave axes take sizes, e.g. --axes Z3C2YX"
                )
        if kind == "plain" and min(shape[-2:]) < min_size and 1 < full_shape[-1] < min_size <= min(full_shape[-3:-1]):
            raise DataError(
                f"{path}: --axes {axes} makes planes of {shape[-2]} x {shape[-1]} pixels, but the file's last axis "
                f"({full_shape[-1]}) looks like channels: --axes YXC (or leave --axes out)"
            )
        channel = check_plane_and_channel(path, file_axes, shape, channel, min_size)
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
        return StackInfo(path, kind, file_axes, shape, dtype, channel, pixel_sizes, offset, per_page, storage=self)

    def raw_reader(self, info: StackInfo) -> "TiffPlaneReader":
        return TiffPlaneReader(info)

    def create_output(self, path: Path, info: StackInfo, axes: str, shape: tuple[int, ...], description: str) -> int:
        """An all-zero float32 TIFF of ``shape`` with the input's calibration; returns the byte offset of
        its (contiguous, little-endian) pixel data for ``PlaneWriter``."""
        kind = output_kind(info, axes)
        sizes = info.pixel_sizes
        resolution = None
        if sizes.x and sizes.y:
            resolution = (1.0 / sizes.x, 1.0 / sizes.y)
        options = dict(
            shape=shape,
            dtype="<f4",
            byteorder="<",
            returnoffset=True,
            metadata=_metadata(kind, axes, sizes, description),
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

    def writer(self, path: Path, info: StackInfo, offset: int, samples: int | None) -> "PlaneWriter":
        return PlaneWriter(path, offset, info.plane_shape)


class TiffPlaneReader:
    """Reads single planes of one TIFF in its dtype: one positioned read per plane of contiguous
    uncompressed pixels, else one page (or run of pages) decoded at a time."""

    def __init__(self, info: StackInfo):
        self.info = info
        self._fd = os.open(info.path, os.O_RDONLY) if info.offset is not None else None
        self._tif = tifffile.TiffFile(info.path) if info.offset is None else None
        self._channels_last = None  # (Y, X, C), read once on first use

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def read_raw(self, plane: int) -> np.ndarray:
        info = self.info
        index = info.stored_index(plane)
        height, width = info.plane_shape
        if info.channel_last:
            if self._channels_last is None:
                self._channels_last = self._tif.series[0].asarray().reshape(height, width, info.shape[0])
            return self._channels_last[:, :, index]
        if self._fd is not None:
            nbytes = height * width * info.dtype.itemsize
            data = os.pread(self._fd, nbytes, info.offset + index * nbytes)
            if len(data) != nbytes:
                raise DataError(f"{info.path}: truncated at plane {plane}")
            return np.frombuffer(data, info.dtype).reshape(height, width)
        if info.per_page < 0:
            pages = self._tif.series[0].pages[index * -info.per_page : (index + 1) * -info.per_page]
            return np.concatenate([p.asarray().ravel() for p in pages]).reshape(height, width)
        page, within = divmod(index, info.per_page)
        return self._tif.series[0].pages[page].asarray().reshape(info.per_page, height, width)[within]


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

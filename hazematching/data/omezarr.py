"""OME-Zarr (NGFF 0.4 and 0.5) images read and written one 2D YX plane at a time.

Written with zarr 3 directly rather than through ``ome-zarr`` or ``ngff-zarr``: both write whole
(dask) arrays at once, while the experiment runner must create an empty output first and let every
process fill its own planes, chunk by chunk, resumably. zarr 3 reads and writes both the Zarr v2
layout of NGFF 0.4 and the v3 layout of NGFF 0.5; the metadata we need (axes, the full-resolution
level and its scale) is a few fields. Outputs keep the input's NGFF version, axes, units, scale,
translation and YX chunking, with one plane per chunk along the other axes, so no two processes
ever write the same chunk.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hazematching.data.io import SUPPORTED_DTYPES, DataError
from hazematching.data.layout import (
    PixelSizes,
    StackFormat,
    StackInfo,
    check_plane_and_channel,
    normalize_unit,
    split_axes,
)

SUPPORTED_VERSIONS = ("0.4", "0.5")
INSTALL_HINT = (
    'pip install "hazematching[omezarr]" (zarr>=3; not beside the simulate extra, whose microsim pins zarr<3)'
)
_METADATA_FILES = ("zarr.json", ".zattrs", ".zgroup")
_SPACE = {"z": "Z", "y": "Y", "x": "X"}


@dataclass(frozen=True)
class NgffImage:
    """What an output needs to repeat of its input's NGFF metadata."""

    version: str
    name: str
    axes: tuple[dict, ...]  # NGFF axis objects, in stored order
    dataset: str  # path of the full-resolution level inside the group
    transforms: tuple[dict, ...] = ()  # coordinateTransformations of that level (scale, translation)
    yx_chunks: tuple[int, int] = (256, 256)
    extra: dict = field(default_factory=dict)


def is_zarr(path: Path) -> bool:
    """A ``*.zarr`` path, or a folder holding Zarr metadata."""
    path = Path(path)
    return path.suffix.lower() == ".zarr" or (path.is_dir() and any((path / n).is_file() for n in _METADATA_FILES))


def metadata_file(path: Path) -> Path:
    """The group's metadata file: its size and time stand for the store's in the manifest."""
    for name in (".zattrs", "zarr.json", ".zgroup"):
        if (Path(path) / name).is_file():
            return Path(path) / name
    return Path(path)


def _zarr():
    """zarr >= 3, or a one-line error that says what to install."""
    try:
        import zarr
    except ImportError:
        raise DataError(f"reading or writing OME-Zarr needs zarr>=3, which is not installed: {INSTALL_HINT}") from None
    if int(zarr.__version__.split(".")[0]) < 3:
        raise DataError(
            f"reading or writing OME-Zarr needs zarr>=3, but zarr {zarr.__version__} is installed: {INSTALL_HINT}"
        )
    return zarr


def _letter(path: Path, axis: dict) -> str:
    kind, name = axis.get("type"), str(axis.get("name", "")).lower()
    if kind == "time" or (kind is None and name == "t"):
        return "T"
    if kind == "channel" or (kind is None and name == "c"):
        return "C"
    if name in _SPACE and kind in (None, "space"):
        return _SPACE[name]
    raise DataError(f"{path}: NGFF axis {axis} is not one of t (time), c (channel), z, y, x (space)")


def read_metadata(path: Path) -> tuple[NgffImage, str]:
    """The image's NGFF description and its axes as letters (e.g. 'TZYX'), with every check that
    tells a user what they pointed at instead of an image."""
    zarr = _zarr()
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: does not exist")
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:  # zarr raises several types for what is not a group
        raise DataError(f"{path}: not a Zarr group ({type(exc).__name__}: {exc}); expected an OME-Zarr image") from exc
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests its metadata under "ome"
    if "image-label" in ome:
        raise DataError(f"{path}: is an OME-Zarr label image (image-label metadata); dehaze the intensity image")
    if "plate" in ome or "well" in ome:
        raise DataError(f"{path}: is an OME-Zarr plate/well; pass one image of it, e.g. {path}/A/1/0")
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise DataError(f"{path}: a Zarr store but not an OME-Zarr image (no 'multiscales' metadata)")
    image = multiscales[0]
    version = str(ome.get("version", image.get("version", "unknown")))
    if version not in SUPPORTED_VERSIONS:
        raise DataError(
            f"{path}: NGFF version {version} is not supported; expected one of {', '.join(SUPPORTED_VERSIONS)}"
        )
    axes = tuple(image.get("axes") or ())
    if not axes or not all(isinstance(a, dict) for a in axes):
        raise DataError(f"{path}: NGFF {version} multiscales without axes objects")
    letters = "".join(_letter(path, a) for a in axes)
    if len(set(letters)) != len(letters) or not letters.endswith("YX"):
        raise DataError(
            f"{path}: axes {letters} (from {[a.get('name') for a in axes]}); expected distinct axes ending in y, x"
        )
    level = image["datasets"][0]  # NGFF: the first dataset is the full resolution
    extra = {k: image[k] for k in ("coordinateTransformations",) if k in image}
    try:
        array = group[level["path"]]
    except KeyError:
        raise DataError(f"{path}: its full-resolution level {level['path']!r} is missing") from None
    chunks = tuple(array.chunks)
    ngff = NgffImage(
        version,
        str(image.get("name", path.name)),
        axes,
        str(level["path"]),
        tuple(level.get("coordinateTransformations") or ()),
        (int(chunks[-2]), int(chunks[-1])),
        extra,
    )
    return ngff, letters


def open_array(path: Path, ngff: NgffImage, mode: str = "r"):
    return _zarr().open_array(str(Path(path) / ngff.dataset), mode=mode)


def layout(path: Path, ngff: NgffImage, letters: str) -> tuple[tuple[int, ...], np.dtype]:
    array = open_array(path, ngff)
    if len(array.shape) != len(letters):
        raise DataError(f"{path}: level {ngff.dataset} has shape {array.shape} but {len(letters)} axes ({letters})")
    dtype = np.dtype(array.dtype)
    if dtype.type not in SUPPORTED_DTYPES:
        raise DataError(f"{path}: unsupported pixel type {dtype}; expected uint8, uint16 or float")
    return tuple(int(n) for n in array.shape), dtype


def scale_of(ngff: NgffImage, letter_index: int) -> float | None:
    for transform in ngff.transforms:
        if transform.get("type") == "scale":
            return float(transform["scale"][letter_index])
    return None


def _pick(values: list, keep: list[int], fill: dict[int, object]) -> list:
    """``values`` at the input axes ``keep`` (None: a new axis, filled from ``fill``)."""
    return [values[i] if i is not None else fill[n] for n, i in enumerate(keep)]


def create(path: Path, ngff: NgffImage, in_letters: str, out_letters: str, shape: tuple[int, ...], note: str) -> None:
    """An empty float32 OME-Zarr image with the input's metadata for the axes ``out_letters`` (a C
    axis that the input has not, e.g. samples, is added as a channel axis)."""
    zarr = _zarr()
    keep = [in_letters.index(a) if a in in_letters else None for a in out_letters]
    new = {n: {"name": "c", "type": "channel"} for n, i in enumerate(keep) if i is None}
    axes = _pick(list(ngff.axes), keep, new)
    transforms = []
    for transform in ngff.transforms:
        kind = transform.get("type")
        if kind in ("scale", "translation") and kind in transform:
            neutral = {n: 1.0 if kind == "scale" else 0.0 for n in new}
            transforms.append({"type": kind, kind: _pick(list(transform[kind]), keep, neutral)})
    chunks = tuple(1 for _ in shape[:-2]) + tuple(min(c, n) for c, n in zip(ngff.yx_chunks, shape[-2:]))
    zarr_format = 2 if ngff.version == "0.4" else 3
    group = zarr.open_group(str(path), mode="w-", zarr_format=zarr_format)
    options = {"dimension_names": [a["name"] for a in axes]} if zarr_format == 3 else {}
    group.create_array(ngff.dataset, shape=shape, chunks=chunks, dtype="float32", fill_value=0.0, **options)
    image = {
        "name": ngff.name,
        "axes": axes,
        "datasets": [{"path": ngff.dataset, "coordinateTransformations": transforms}],
    }
    if zarr_format == 2:
        group.attrs.update({"multiscales": [{"version": ngff.version, **image}], "hazematching": note})
    else:
        group.attrs.update({"ome": {"version": ngff.version, "multiscales": [image]}, "hazematching": note})


def plane_index(letters: str, shape: tuple[int, ...], plane: int, fixed: dict[str, object]) -> tuple:
    """The index of output plane ``plane`` (C order over the non-YX axes other than those in ``fixed``)."""
    free = [n for a, n in zip(letters[:-2], shape[:-2]) if a not in fixed]
    coords = iter(int(i) for i in np.unravel_index(plane, free)) if free else iter(())
    index = [fixed[a] if a in fixed else next(coords) for a in letters[:-2]]
    return (*index, slice(None), slice(None))


class ZarrPlaneReader:
    """Reads single planes of an OME-Zarr image (zarr decodes only the chunks they touch)."""

    def __init__(self, info):
        self.info = info
        self.array = open_array(info.path, info.ngff)

    def read_raw(self, plane: int) -> np.ndarray:
        fixed = {"C": self.info.channel} if self.info.channel is not None else {}
        return np.asarray(self.array[plane_index(self.info.axes, self.info.shape, plane, fixed)])

    def close(self) -> None:
        pass


class ZarrPlaneWriter:
    """Writes planes into an image made by ``create``; each plane is its own chunk(s), so several
    processes may write different planes at once."""

    def __init__(self, path: Path, ngff: NgffImage, letters: str):
        self.letters = letters
        self.array = open_array(path, ngff, mode="r+")

    def write_plane(self, plane: int, data: np.ndarray) -> None:
        """``data``: one (Y, X) plane, or (K, Y, X) for an output with a C axis (the samples)."""
        fixed = {"C": slice(None)} if "C" in self.letters else {}
        self.array[plane_index(self.letters, self.array.shape, plane, fixed)] = np.asarray(data, dtype=np.float32)

    def sync(self) -> None:
        pass  # zarr has written the chunk files when __setitem__ returns

    def close(self) -> None:
        pass


def out_letters(in_letters: str, samples: bool) -> str:
    """Output axes: the input's without C; the samples get C where NGFF wants it (after T)."""
    letters = in_letters.replace("C", "")
    if samples:
        at = 1 if letters.startswith("T") else 0
        letters = letters[:at] + "C" + letters[at:]
    return letters


class OmeZarrFormat(StackFormat):
    """OME-Zarr in, OME-Zarr out (the input's NGFF version, axes, units, scale and chunking)."""

    suffix = ".ome.zarr"

    def claims(self, path: Path) -> bool:
        return is_zarr(path)

    def open(self, path: Path, axes: str | None, channel: int | None, min_size: int) -> StackInfo:
        """Axes and scale from the NGFF metadata (all axes kept, so that outputs have the input's
        layout), the full-resolution level."""
        ngff, letters = read_metadata(path)
        if axes is not None and split_axes(axes)[0] != letters:
            raise DataError(f"{path}: --axes {axes} disagrees with the image's NGFF axes {letters}; leave --axes out")
        shape, dtype = layout(path, ngff, letters)
        channel = check_plane_and_channel(path, letters, shape, channel, min_size)
        units = {a["name"].lower(): a.get("unit") for a in ngff.axes}
        scale = {a: scale_of(ngff, i) for i, a in enumerate(letters)}
        sizes = PixelSizes(scale["X"], scale["Y"], scale.get("Z"), normalize_unit(units.get("x")))
        return StackInfo(path, "ome-zarr", letters, shape, dtype, channel, sizes, ngff=ngff, storage=self)

    def raw_reader(self, info: StackInfo) -> ZarrPlaneReader:
        return ZarrPlaneReader(info)

    def samples_axes(self, out_axes: str) -> str:
        return out_letters(out_axes, samples=True)

    def create_output(self, path: Path, info: StackInfo, axes: str, shape: tuple[int, ...], description: str) -> int:
        create(path, info.ngff, info.axes, axes, shape, description)
        return 0

    def writer(self, path: Path, info: StackInfo, offset: int, samples: int | None) -> ZarrPlaneWriter:
        return ZarrPlaneWriter(path, info.ngff, info.output_layout(samples)[0])

"""Reading paired widefield/confocal TIFFs with errors that name the file and the problem.

Two layouts are accepted for a split directory:
(a) 2-channel TIFFs, channel 0 = confocal target, channel 1 = widefield input (the paper's layout,
    axes CYX or YXC);
(b) ``input/`` and ``target/`` sub-folders with single-channel 2D TIFFs matched by file name.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

TIFF_SUFFIXES = (".tif", ".tiff")
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32, np.float64, np.int16, np.int32, np.uint32, np.float16)


class DataError(ValueError):
    """Bad user data: the message says which file and what was expected."""


@dataclass
class ImagePair:
    name: str
    input: np.ndarray  # widefield, float32 (H, W)
    target: np.ndarray  # confocal, float32 (H, W)
    input_path: Path | None = None  # the file(s) it came from: one 2-channel file, or input/ and target/
    target_path: Path | None = None


def is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def read_tiff(path: Path, mmap: bool = False) -> np.ndarray:
    """Read a TIFF, squeezing singleton axes, checking dtype and finiteness.

    ``mmap``: memory-map uncompressed, contiguous files (pixels are then read from disk only when a
    crop touches them); other files are read into memory as usual."""
    if not is_tiff(path):
        raise DataError(f"{path}: not a TIFF file (expected suffix .tif/.tiff)")
    try:
        array = None
        if mmap:
            try:
                array = tifffile.memmap(path, mode="r")
            except ValueError:  # compressed or not contiguous: cannot be mapped
                array = None
        if array is None:
            array = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(f"{path}: cannot be read as TIFF ({type(exc).__name__}: {exc})") from exc
    if array.dtype.type not in SUPPORTED_DTYPES:
        raise DataError(f"{path}: unsupported pixel type {array.dtype}; expected uint8, uint16 or float")
    array = np.squeeze(array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{path}: contains {bad} NaN/Inf pixel(s); clean or mask the image first")
    return array


def _as_2d(path: Path, array: np.ndarray, role: str, mmap: bool = False) -> np.ndarray:
    if array.ndim != 2:
        raise DataError(
            f"{path}: {role} image has shape {array.shape}; expected a 2D (Y, X) image "
            "(3D stacks and multi-channel images are not supported here)"
        )
    return array if mmap else array.astype(np.float32)


def read_two_channel(path: Path, mmap: bool = False) -> ImagePair:
    """Layout (a): channel 0 = target (confocal), channel 1 = input (widefield)."""
    array = read_tiff(path, mmap)
    if array.ndim == 3 and array.shape[0] == 2:
        target, inp = array[0], array[1]
    elif array.ndim == 3 and array.shape[-1] == 2:
        target, inp = array[..., 0], array[..., 1]
    else:
        raise DataError(
            f"{path}: shape {array.shape}; expected a 2-channel 2D image (2, Y, X) or (Y, X, 2) with "
            "channel 0 = confocal target and channel 1 = widefield input, or use input/ + target/ folders"
        )
    if mmap:  # views into the mapped file; crops are cast to float32 by the datasets
        return ImagePair(path.stem, inp, target, path, path)
    return ImagePair(path.stem, inp.astype(np.float32), target.astype(np.float32), path, path)


def read_folder_pair(input_path: Path, target_path: Path, mmap: bool = False) -> ImagePair:
    """Layout (b): one single-channel 2D TIFF each."""
    inp = _as_2d(input_path, read_tiff(input_path, mmap), "input", mmap)
    target = _as_2d(target_path, read_tiff(target_path, mmap), "target", mmap)
    if inp.shape != target.shape:
        raise DataError(
            f"{input_path} has shape {inp.shape} but its target {target_path} has shape {target.shape}; "
            "pairs must have the same shape"
        )
    return ImagePair(input_path.stem, inp, target, input_path, target_path)


def _tiffs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def read_split(directory: Path, min_size: int = 1, mmap: bool = False) -> list[ImagePair]:
    """All pairs of a split directory in either layout; every image must be >= ``min_size`` wide/high."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory does not exist")
    if (directory / "input").is_dir() or (directory / "target").is_dir():
        if not ((directory / "input").is_dir() and (directory / "target").is_dir()):
            raise DataError(f"{directory}: has only one of input/ and target/; both are needed")
        inputs = _tiffs(directory / "input")
        targets = {p.name: p for p in _tiffs(directory / "target")}
        missing = [p.name for p in inputs if p.name not in targets]
        if missing:
            raise DataError(f"{directory / 'input'}: no target with the same name for {missing[:5]}")
        pairs = [read_folder_pair(p, targets[p.name], mmap) for p in inputs]
    else:
        files = _tiffs(directory)
        non_tiff = [p for p in files if not is_tiff(p)]
        if non_tiff:
            raise DataError(f"{non_tiff[0]}: not a TIFF file (expected .tif/.tiff files in {directory})")
        pairs = [read_two_channel(p, mmap) for p in files]
    if not pairs:
        raise DataError(f"{directory}: contains no TIFF images")
    for pair in pairs:
        if min(pair.input.shape) < min_size:
            raise DataError(
                f"{directory}/{pair.name}: image of shape {pair.input.shape} is smaller than the crop "
                f"size {min_size}; use a smaller --crop-size or larger images"
            )
    return pairs


def load_splits(
    data: Path, val_data: Path | None, val_fraction: float, min_size: int, mmap: bool = False
) -> tuple[list[ImagePair], list[ImagePair]]:
    """Training and validation pairs (``checks.check_pairs`` then looks at what they hold).

    ``data`` may hold ``train/`` (and ``val/``) sub-folders, as ``hazematching simulate`` writes,
    or be a split folder itself; without a validation folder the last ``val_fraction`` of the
    files (sorted by name) is held out.
    """
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"{data}: data directory does not exist")
    train_dir = data / "train" if (data / "train").is_dir() else data
    train = read_split(train_dir, min_size, mmap)
    if val_data is not None:
        return train, read_split(Path(val_data), min_size, mmap)
    if train_dir != data and (data / "val").is_dir():
        return train, read_split(data / "val", min_size, mmap)
    if len(train) < 2:
        raise DataError(
            f"{train_dir}: one image cannot be split into training and validation; add images or pass --val-data"
        )
    n_val = min(len(train) - 1, max(1, round(val_fraction * len(train))))
    return train[:-n_val], train[-n_val:]


def read_image_2d(path: Path, min_size: int, channel: int | None = None, flag: str = "--channel") -> np.ndarray:
    """A single-channel 2D image for prediction (singleton axes are dropped), as float32.

    ``channel`` picks one channel of a multi-channel (CYX or YXC) image, e.g. 1 for the widefield
    channel of the paper's paired files; ``flag``: the option that gives it, as the errors name it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    array = read_tiff(path)
    if channel is not None and array.ndim == 3:
        axis = 0 if array.shape[0] <= array.shape[-1] else 2
        if not 0 <= channel < array.shape[axis]:
            raise DataError(
                f"{path}: {flag} {channel} requested but the image of shape {array.shape} has "
                f"{array.shape[axis]} channel(s)"
            )
        array = np.take(array, channel, axis=axis)
    if array.ndim == 3 and (array.shape[-1] in (3, 4) or array.shape[0] in (3, 4)):
        raise DataError(
            f"{path}: shape {array.shape} looks like an RGB/multi-channel image; expected one 2D channel (Y, X) "
            f"(pick one with {flag} C)"
        )
    if array.ndim != 2:
        raise DataError(
            f"{path}: shape {array.shape}; expected a 2D (Y, X) image, not a stack"
            + (f" (a channel image? pick one with {flag} C)" if array.ndim == 3 and min(array.shape) <= 4 else "")
        )
    if min(array.shape) < min_size:
        raise DataError(f"{path}: image of shape {array.shape} is smaller than the minimum {min_size} x {min_size}")
    return array.astype(np.float32)

"""What a job is made of: the input files, their outputs, the settings that change the numbers."""

import errno
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hazematching.data.io import TIFF_SUFFIXES, DataError
from hazematching.data.omezarr import is_zarr, metadata_file
from hazematching.data.stack import StackInfo
from hazematching.inference.speed import resolve_precision
from hazematching.run import WEIGHTS_NAME, LoadedRun
from hazematching.settings import InferenceSettings

MIN_SIZE = 16


class JobError(RuntimeError):
    """The job as a whole cannot run (output not writable, settings that differ from earlier results)."""


@dataclass
class FileJob:
    key: str  # output file name, the manifest key
    input: Path
    outputs: dict[str, Path]  # "mean", "std", "samples" -> final path
    name: str = ""  # input path relative to the input folder: keys the noise
    info: StackInfo | None = None
    error: str | None = None
    warning: str | None = None  # intensities far outside the training range (``input_range``)
    offsets: dict[str, int] = field(default_factory=dict)  # byte offsets of the work copies


def split_name(name: str) -> tuple[str, str]:
    """('cell', '.ome.tif') for cell.ome.tiff, ('cell', '.tif') for cell.TIF: outputs keep the OME mark."""
    lower = name.lower()
    for suffix, kept in (
        (".ome.tiff", ".ome.tif"),
        (".ome.tif", ".ome.tif"),
        (".tiff", ".tif"),
        (".tif", ".tif"),
        (".ome.zarr", ".ome.zarr"),
        (".zarr", ".zarr"),
    ):
        if lower.endswith(suffix):
            return name[: -len(suffix)], kept
    return Path(name).stem, ".tif"


def output_names(main: Path, keep_samples: bool, point_predictor: bool) -> dict[str, Path]:
    base, ext = split_name(main.name)
    names = {"mean": main}
    if not point_predictor:
        names["std"] = main.with_name(f"{base}_std{ext}")
    if keep_samples:
        names["samples"] = main.with_name(f"{base}_samples{ext}")
    return names


def _is_input(path: Path) -> bool:
    return (path.suffix.lower() in TIFF_SUFFIXES and path.is_file()) or (
        path.suffix.lower() == ".zarr" and path.is_dir()
    )


def _candidates(folder: Path, recursive: bool):
    """Entries of ``folder`` (with ``recursive`` of its sub-folders too, never inside a Zarr store)."""
    if not recursive:
        yield from folder.iterdir()
        return
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            yield Path(root) / name
        dirs[:] = [d for d in dirs if not d.lower().endswith(".zarr")]


def list_inputs(input_path: Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """The TIFFs and OME-Zarr images (``*.zarr``) of a folder (with ``recursive`` also of its
    sub-folders), hidden ones and anything under ``exclude`` (the output folder, when it lies inside
    the input) left out. A single file or Zarr image is its own list."""
    input_path = Path(input_path)
    if not input_path.is_dir() or is_zarr(input_path):
        if not input_path.exists():
            raise DataError(f"{input_path}: does not exist")
        return [input_path]
    skip = exclude.resolve() if exclude is not None else None
    files = sorted(
        p
        for p in _candidates(input_path, recursive)
        if _is_input(p)
        and not any(part.startswith(".") for part in p.relative_to(input_path).parts)
        and not (skip is not None and p.resolve().is_relative_to(skip))
    )
    if not files:
        raise DataError(
            f"{input_path}: no .tif/.tiff files or .zarr images to predict"
            + ("" if recursive else " (--recursive also looks in sub-folders)")
        )
    return files


def input_stat(path: Path) -> list[int]:
    """Size and time of a file, or of a Zarr image's metadata: what tells that an input changed."""
    stat = (metadata_file(path) if is_zarr(path) else path).stat()
    return [stat.st_size, stat.st_mtime_ns]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Settings written to a manifest only when they differ from what earlier releases always used.
OMITTED_DEFAULTS = {"mmse": "samples", "sample_noise": "independent"}


def result_settings(
    run: LoadedRun,
    model_dir: Path,
    device: torch.device,
    inference: InferenceSettings,
    options: dict,
    channel,
    axes,
    keep_samples: bool,
    calibrated: bool,
) -> dict:
    """Everything that changes the output numbers (the resolved ``inference`` settings, the precision
    among the speed ``options``, ...): outputs made with other settings are never mixed in."""
    settings = inference.model_dump()
    for key, earlier in OMITTED_DEFAULTS.items():
        if settings[key] == earlier:  # manifests of earlier releases stay valid
            del settings[key]
    settings["precision"] = resolve_precision(options.get("precision", "auto"), device)
    settings.update(
        model_sha256=file_sha256(Path(model_dir) / WEIGHTS_NAME),
        channel=channel,
        axes=axes,
        save_samples=keep_samples,
        calibration=run.config.calibration.model_dump() if calibrated and run.config.calibration else None,
    )
    if run.objective == "mse":  # one deterministic prediction: no sampler settings
        for key in ("samples", "steps", "solver", "seed", "save_samples", "calibration", "mmse", "sample_noise"):
            settings.pop(key, None)
    return settings


def full_disk(exc: BaseException, folder: Path) -> "JobError | None":
    """A ``JobError`` for a full file system or quota (one line naming the output folder), else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return JobError(
            f"the output folder {folder} is full ({exc.strerror}): free space (or choose another --output) and "
            "relaunch the same command; the planes finished so far are kept and not computed again"
        )
    return None


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".hazematching-probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise JobError(
            f"cannot write to the output folder {folder} ({exc.strerror or exc}); choose a writable --output"
        ) from exc


def make_jobs(
    inputs: list[Path], input_root: Path, output: Path, single_file: bool, keep_samples: bool, point_predictor: bool
) -> list[FileJob]:
    """One job per input; sub-folders of the input are mirrored in the output."""
    jobs = []
    for path in inputs:
        if single_file and is_zarr(path) != (output.suffix.lower() == ".zarr"):
            raise JobError(
                f"--output {output}: an {'OME-Zarr' if is_zarr(path) else 'TIFF'} input is written in its own format; "
                f"give --output NAME{'.ome.zarr' if is_zarr(path) else '.tif'} or a folder"
            )
        folder_input = input_root.is_dir() and not is_zarr(input_root)
        relative = path.relative_to(input_root) if folder_input else Path(path.name)
        main = output if single_file else output / relative.parent / "".join(split_name(path.name))
        key = main.name if single_file else main.relative_to(output).as_posix()
        jobs.append(FileJob(key, path, output_names(main, keep_samples, point_predictor), relative.as_posix()))
    inputs_resolved = {j.input.resolve() for j in jobs}
    seen = {}
    for job in jobs:
        for target in job.outputs.values():
            if target.resolve() in inputs_resolved:
                raise JobError(f"{target} would overwrite an input; choose another --output")
            if target in seen:
                raise JobError(f"{job.input} and {seen[target]} would both write {target}; rename one of them")
            seen[target] = job.input
    return jobs

"""Dehaze a whole experiment: every YX plane of every TIFF of a folder, on every process, resumable.

Work units are (file, plane). The main process checks all inputs, keeps the manifest
(``hazematching_manifest.json`` in the output folder: settings, model hash, per-file status) and
creates each output (final shape and metadata, all zeros) in a work folder; it then hands the plan
to every process, and each computes its share of the planes and writes them in place. A plane counts
as done once its line is in that process's log, written after its pixels were synced, so a relaunch
(with any number of processes) continues where the last run stopped. A finished file is renamed
to its final name, so every file under a final name is complete. Noise is keyed on (seed, input file
name, plane index): results do not depend on how the work was split.

Launch on several processes/GPUs/nodes with ``accelerate launch -m hazematching predict ...``; the
output folder must then be on a file system that all nodes share.
"""

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hazematching.data.io import TIFF_SUFFIXES, DataError
from hazematching.data.stack import PlaneReader, PlaneWriter, StackInfo, create_output, open_stack, parse_axes
from hazematching.inference.speed import bf16_supported
from hazematching.run import WEIGHTS_NAME, LoadedRun, RunError, atomic_write_bytes, load_model
from hazematching.settings import resolve_options
from hazematching.version import __version__

MANIFEST_NAME = "hazematching_manifest.json"
WORK_NAME = ".hazematching-work"
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
    offsets: dict[str, int] = field(default_factory=dict)  # byte offsets of the work copies


def split_name(name: str) -> tuple[str, str]:
    """('cell', '.ome.tif') for cell.ome.tiff, ('cell', '.tif') for cell.TIF: outputs keep the OME mark."""
    lower = name.lower()
    for suffix, kept in ((".ome.tiff", ".ome.tif"), (".ome.tif", ".ome.tif"), (".tiff", ".tif"), (".tif", ".tif")):
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


def list_inputs(input_path: Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """The TIFFs of a folder (with ``recursive`` also of its sub-folders), hidden ones and anything
    under ``exclude`` (the output folder, when it lies inside the input) left out."""
    input_path = Path(input_path)
    if not input_path.is_dir():
        if not input_path.exists():
            raise DataError(f"{input_path}: does not exist")
        return [input_path]
    skip = exclude.resolve() if exclude is not None else None
    candidates = input_path.rglob("*") if recursive else input_path.iterdir()
    files = sorted(
        p
        for p in candidates
        if p.suffix.lower() in TIFF_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(input_path).parts)
        and not (skip is not None and p.resolve().is_relative_to(skip))
    )
    if not files:
        raise DataError(
            f"{input_path}: no .tif/.tiff files to predict"
            + ("" if recursive else " (--recursive also looks in sub-folders)")
        )
    return files


def input_stat(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def result_settings(
    run: LoadedRun,
    model_dir: Path,
    device: torch.device,
    options: dict,
    channel,
    axes,
    keep_samples: bool,
    calibrated: bool,
) -> dict:
    """Everything that changes the output numbers: outputs made with other settings are never mixed in."""
    # the options of predict_array that change the numbers (the others change only speed)
    settings = resolve_options(run.config, options).model_dump()
    precision = options.get("precision", "auto")
    settings["precision"] = (
        "bf16" if precision == "bf16" or (precision == "auto" and bf16_supported(device)) else "fp32"
    )
    settings.update(
        model_sha256=file_sha256(Path(model_dir) / WEIGHTS_NAME),
        channel=channel,
        axes=axes,
        save_samples=keep_samples,
        calibration=run.config.calibration.model_dump() if calibrated and run.config.calibration else None,
    )
    if run.objective == "mse":  # one deterministic prediction: no sampler settings
        for key in ("samples", "steps", "solver", "seed", "save_samples", "calibration"):
            settings.pop(key)
    return settings


class Manifest:
    """``hazematching_manifest.json``: one entry per output file, each with the settings it was made with."""

    def __init__(self, path: Path):
        self.path = path
        self.files: dict[str, dict] = {}
        if path.is_file():
            try:
                self.files = json.loads(path.read_text())["files"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise JobError(
                    f"{path}: not a hazematching manifest ({exc}); move it away or use another --output"
                ) from exc

    def save(self) -> None:
        body = {
            "format": 1,
            "hazematching": __version__,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": self.files,
        }
        atomic_write_bytes(self.path, json.dumps(body, indent=2, default=str).encode())

    def complete(self, job: FileJob, settings: dict) -> bool:
        """Made with these settings from this very input (same size and modification time), all outputs present."""
        entry = self.files.get(job.key, {})
        return (
            entry.get("status") == "complete"
            and entry.get("settings") == settings
            and entry.get("input_stat") == input_stat(job.input)
            and all(p.is_file() for p in job.outputs.values())
        )

    def conflicts(self, settings: dict, keys: list[str]) -> list[str]:
        """Complete outputs among ``keys`` made with other settings, as 'file: key a -> b' lines."""
        lines = []
        for key in keys:
            entry = self.files.get(key, {})
            old = entry.get("settings") or {}
            if entry.get("status") == "complete" and old != settings:
                diff = [
                    f"{k} {old.get(k)!r} -> {settings.get(k)!r}"
                    for k in sorted(set(old) | set(settings))
                    if old.get(k) != settings.get(k) and k != "model_sha256"
                ]
                if old.get("model_sha256") != settings.get("model_sha256"):
                    diff.insert(0, "another model")
                lines.append(f"{key}: {', '.join(diff)}")
        return lines


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".hazematching-probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise JobError(
            f"cannot write to the output folder {folder} ({exc.strerror or exc}); choose a writable --output"
        ) from exc


def _jobs(
    inputs: list[Path], input_root: Path, output: Path, single_file: bool, keep_samples: bool, point_predictor: bool
) -> list[FileJob]:
    """One job per input; sub-folders of the input are mirrored in the output."""
    jobs = []
    for path in inputs:
        relative = path.relative_to(input_root) if input_root.is_dir() else Path(path.name)
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


class WorkFolder:
    """``OUT/.hazematching-work/<file>/``: the outputs being written plus one plane log per process."""

    def __init__(self, root: Path):
        self.root = root

    def folder(self, job: FileJob) -> Path:
        return self.root / job.key

    def remove(self, job: FileJob) -> None:
        """Delete a file's work folder and the sub-folders it leaves empty."""
        folder = self.folder(job)
        shutil.rmtree(folder, ignore_errors=True)
        for parent in folder.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def partial(self, job: FileJob, name: str) -> Path:
        return self.folder(job) / f"{name}.tif"

    def prepare(self, job: FileJob, settings: dict, keep_samples: bool) -> None:
        """Reuse the work copies of an interrupted run with the same settings, else start afresh."""
        folder, info = self.folder(job), job.info
        state = {
            "settings": settings,
            "input_size": job.input.stat().st_size,
            "axes": info.axes,
            "shape": list(info.shape),
        }
        state_path = folder / "state.json"
        try:
            old = json.loads(state_path.read_text())
            if old["state"] == json.loads(json.dumps(state, default=str)) and all(
                self.partial(job, name).is_file() for name in job.outputs
            ):
                job.offsets = old["offsets"]
                return
        except (OSError, ValueError, KeyError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        description = f"hazematching {__version__} {json.dumps(settings, default=str)}"
        for name in job.outputs:
            axes, shape = info.out_axes, info.out_shape
            if name == "samples":
                axes, shape = axes[:-2] + "CYX", (*shape[:-2], settings["samples"], *shape[-2:])
            job.offsets[name] = create_output(self.partial(job, name), info, axes, shape, f"{name}: {description}")
        atomic_write_bytes(state_path, json.dumps({"state": state, "offsets": job.offsets}, default=str).encode())

    def read_logs(self, job: FileJob) -> tuple[set[int], dict[int, str]]:
        """Planes done and planes failed (with the message), from every process's log."""
        done, failed = set(), {}
        for log in self.folder(job).glob("rank*.log"):
            for line in log.read_text().splitlines():
                parts = line.split(" ", 2)
                if len(parts) >= 2 and parts[1].isdigit():
                    if parts[0] == "done":
                        done.add(int(parts[1]))
                    elif parts[0] == "fail":
                        failed[int(parts[1])] = parts[2] if len(parts) > 2 else "failed"
        return done, failed

    def log(self, job: FileJob, rank: int, line: str) -> None:
        with open(self.folder(job) / f"rank{rank}.log", "a") as f:
            f.write(line.replace("\n", " ") + "\n")
            f.flush()


def derive_seed(seed: int, *keys: str | int) -> int:
    """A 31-bit seed from ``seed`` and keys (input file name, plane index): the noise of a plane then
    depends on what it is, not on which process computes it or in which order."""
    digest = hashlib.blake2b("/".join(map(str, (seed, *keys))).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def _balanced(units: list[tuple[int, int]], costs: list[int], world: int) -> list[list[tuple[int, int]]]:
    """Give each unit to the process with the least work so far (same answer on every process)."""
    shares, load = [[] for _ in range(world)], [0] * world
    for unit in units:
        rank = min(range(world), key=lambda r: (load[r], r))
        shares[rank].append(unit)
        load[rank] += costs[unit[0]]
    return shares


def predict_experiment(
    model_dir: Path,
    input_path: Path,
    output_path: Path,
    device: str = "auto",
    channel: int | None = None,
    axes: str | None = None,
    overwrite: bool = False,
    recursive: bool = False,
    keep_samples: bool = False,
    calibrated: bool = False,
    progress: bool = True,
    **options,
) -> dict:
    """Dehaze a TIFF or every TIFF of a folder plane by plane on all processes of this launch; returns
    the summary (also on non-main processes, with what they did). ``options`` go to ``predict_array``."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from hazematching.inference.predict import predict_array, resolve_device

    wanted = resolve_device(device) if device != "auto" else None
    state = PartialState(cpu=(wanted is not None and wanted.type == "cpu") or not torch.cuda.is_available())
    run_device = wanted if wanted is not None and wanted.type == "cpu" else state.device
    model_dir, input_path, output_path = Path(model_dir), Path(input_path), Path(output_path)
    single_file = not input_path.is_dir() and output_path.suffix.lower() in TIFF_SUFFIXES
    folder = output_path.parent if single_file else output_path
    work = WorkFolder(folder / WORK_NAME)
    axes = parse_axes(axes) if axes else None

    plan, lock, failure = None, None, None
    if state.is_main_process:
        try:
            run = load_model(model_dir, device="cpu")
            settings = result_settings(run, model_dir, run_device, options, channel, axes, keep_samples, calibrated)
            if run.objective == "mse" and (keep_samples or calibrated):
                raise RunError("a U-Net baseline run predicts one image: it has no samples and no std to calibrate")
            if calibrated and run.config.calibration is None:
                raise RunError(
                    "this run is not calibrated: run `hazematching calibrate --model RUN --data VAL_DIR` first"
                )
            if input_path.is_dir() and folder.resolve() == input_path.resolve():
                raise JobError(
                    f"--output {output_path} is the input folder: outputs would mix with the inputs; choose another "
                    "--output"
                )
            inputs = list_inputs(input_path, recursive, exclude=None if single_file else output_path)
            jobs = _jobs(inputs, input_path, output_path, single_file, keep_samples, run.objective == "mse")
            _check_writable(folder)
            work.root.mkdir(exist_ok=True)
            lock = open(work.root / "lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise JobError(
                    f"another hazematching predict is writing to {folder}; wait for it or use another --output"
                ) from exc
            manifest = Manifest(folder / MANIFEST_NAME)
            plan = _plan(jobs, manifest, work, settings, overwrite, channel, axes, keep_samples, single_file)
        except Exception as exc:  # every process must hear of it, or the others wait forever
            failure, plan = exc, {"error": f"{type(exc).__name__}: {exc}"}
    plan = broadcast_object_list([plan])[0]
    if "error" in plan:
        if lock is not None:
            lock.close()
        raise failure or JobError(f"the main process failed to start the job: {plan['error']}")

    jobs = plan["jobs"]
    costs = [int(np.prod(j.info.plane_shape)) if j.info is not None else 0 for j in jobs]
    mine = _balanced(plan["units"], costs, state.num_processes)[state.process_index]
    monitor = _Monitor(jobs, work, plan, progress) if state.is_main_process else None
    run = load_model(model_dir, device=run_device)
    current, reader, writers, broken = None, None, {}, set()
    busy, computed, started = 0.0, 0, time.time()
    inner_progress = progress and state.is_main_process and len(plan["units"]) == 1

    def close_current():
        if reader is not None:
            reader.close()
        for writer in writers.values():
            writer.close()

    try:
        for index, plane in mine:  # in file order: one input and its outputs open at a time
            job = jobs[index]
            if index in broken:
                continue
            tic = time.time()
            try:
                if index != current:
                    close_current()
                    current, reader, writers = index, None, {}
                    reader = PlaneReader(job.info)
                    writers = {
                        name: PlaneWriter(work.partial(job, name), job.offsets[name], job.info.plane_shape)
                        for name in job.outputs
                    }
                image = reader.read(plane)
                seed = derive_seed(plan["settings"].get("seed", 0), job.name, plane)
                result = predict_array(
                    run,
                    image,
                    keep_samples=keep_samples,
                    calibrated=calibrated,
                    progress=inner_progress,
                    job_planes=len(mine),
                    **{**options, "seed": seed},
                )
                for name, writer in writers.items():
                    if name == "samples":
                        writer.write(plane * result.samples.shape[0], result.samples)
                    else:
                        writer.write(plane, getattr(result, name))
                    writer.sync()
                work.log(job, state.process_index, f"done {plane}")
                computed += 1
            except (DataError, RunError, OSError, ValueError) as exc:
                broken.add(index)
                work.log(job, state.process_index, f"fail {plane} {exc}")
            busy += time.time() - tic
            if monitor is not None:
                monitor.poll()
    finally:
        close_current()
    mine_stats = {
        "rank": state.process_index,
        "planes": computed,
        "busy_s": round(busy, 3),
        "wall_s": round(time.time() - started, 3),
        "device": str(run_device),
    }
    marker = work.root / f"launch-{plan['launch']}" / f"rank{state.process_index}.json"
    marker.parent.mkdir(exist_ok=True)
    atomic_write_bytes(marker, json.dumps(mine_stats).encode())
    if monitor is None:
        return {"rank": mine_stats}
    try:
        result = monitor.finish(state.num_processes, plan, started)
    finally:
        lock.close()
    if single_file and result["failed"]:  # one file asked for: its problem is the caller's error
        raise DataError(next(iter(result["failed"].values())))
    return result


def _plan(
    jobs,
    manifest: Manifest,
    work: WorkFolder,
    settings: dict,
    overwrite: bool,
    channel,
    axes,
    keep_samples: bool,
    single_file: bool,
) -> dict:
    """Main process: check inputs, refuse to mix settings, prepare work copies, list pending planes."""
    conflicts = manifest.conflicts(settings, [job.key for job in jobs])
    if conflicts and not overwrite:
        raise JobError(
            f"{manifest.path} lists results made with other settings:\n  "
            + "\n  ".join(conflicts[:10])
            + "\nuse another --output, or --overwrite to recompute these files with the new settings"
        )
    for job in jobs:
        foreign = [p for p in job.outputs.values() if p.exists() and job.key not in manifest.files]
        if foreign and not overwrite:
            raise JobError(
                f"{foreign[0]} exists but was not written by this tool (not in {manifest.path.name}); "
                "move it, use another --output, or --overwrite"
            )
    launch = uuid.uuid4().hex[:12]
    for old in work.root.glob("launch-*"):
        shutil.rmtree(old, ignore_errors=True)
    units, skipped = [], []
    for index, job in enumerate(jobs):
        entry = {
            "input": str(job.input.resolve()),
            "input_stat": input_stat(job.input),
            "outputs": {k: p.name for k, p in job.outputs.items()},
            "settings": settings,
        }
        if not overwrite and manifest.complete(job, settings):
            skipped.append(job.key)
            continue
        try:
            job.info = open_stack(job.input, axes, channel, MIN_SIZE)
            entry.update(
                axes=job.info.axes, shape=list(job.info.shape), planes=job.info.planes, channel=job.info.channel
            )
            if overwrite:
                shutil.rmtree(work.folder(job), ignore_errors=True)
            work.prepare(job, settings, keep_samples)
            done, _ = work.read_logs(job)  # failures of an earlier launch are retried
            units += [(index, p) for p in range(job.info.planes) if p not in done]
            entry.update(status="in progress", error=None)
        except DataError as exc:
            if single_file:
                raise
            job.error = str(exc)
            entry.update(status="failed", error=str(exc))
        manifest.files[job.key] = entry
    manifest.save()
    return {"jobs": jobs, "units": units, "skipped": skipped, "launch": launch, "settings": settings}


class _Monitor:
    """Main process: one progress bar over all processes (read from the plane logs), finishing files."""

    def __init__(self, jobs: list[FileJob], work: WorkFolder, plan: dict, progress: bool):
        self.jobs, self.work = jobs, work
        self.manifest = Manifest(work.root.parent / MANIFEST_NAME)
        self.open = {i for i, j in enumerate(jobs) if j.info is not None and j.key not in plan["skipped"]}
        self.finished, self.failed = [], {j.key: j.error for j in jobs if j.error}
        self.done = {i: 0 for i in self.open}
        self.bar = tqdm(
            total=sum(jobs[i].info.planes for i in self.open),
            desc="dehazing",
            unit="plane",
            disable=not progress,
            dynamic_ncols=True,
        )
        self.last = 0.0
        self.poll(force=True)

    def poll(self, force: bool = False) -> None:
        if not force and time.time() - self.last < 0.5:
            return
        self.last = time.time()
        changed = False
        for index in sorted(self.open):
            job = self.jobs[index]
            done, failed = self.work.read_logs(job)
            self.done[index] = len(done)
            if failed:
                self.failed[job.key] = next(iter(sorted(failed.items())))[1]
                self._set(job, status="failed", error=self.failed[job.key])
                self.open.discard(index)
                changed = True
            elif len(done) == job.info.planes:
                self._finalize(job)
                self.open.discard(index)
                changed = True
        self.bar.n = sum(self.done.values())
        self.bar.set_postfix(files=f"{len(self.finished)} done, {len(self.failed)} failed", refresh=False)
        self.bar.refresh()
        if changed:
            self.manifest.save()

    def _set(self, job: FileJob, **values) -> None:
        self.manifest.files.setdefault(job.key, {}).update(values)

    def _finalize(self, job: FileJob) -> None:
        """Sync and rename the work copies into place (the MMSE last)."""
        for name in sorted(job.outputs, key=lambda n: n == "mean"):
            partial = self.work.partial(job, name)
            job.outputs[name].parent.mkdir(parents=True, exist_ok=True)
            if partial.exists():
                with open(partial, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(partial, job.outputs[name])
        self.work.remove(job)
        self.finished.append(job.key)
        self._set(job, status="complete", error=None, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def finish(self, world: int, plan: dict, started: float) -> dict:
        marker_dir = self.work.root / f"launch-{plan['launch']}"
        while len(list(marker_dir.glob("rank*.json"))) < world:  # other processes still working
            self.poll()
            time.sleep(0.2)
        self.poll(force=True)
        self.bar.close()
        ranks = sorted((json.loads(p.read_text()) for p in marker_dir.glob("rank*.json")), key=lambda r: r["rank"])
        for index in list(self.open):  # planes nobody could do (should not happen): leave them resumable
            self._set(self.jobs[index], status="incomplete")
        self.manifest.save()
        for job in self.jobs:  # failed files leave nothing behind
            if job.key in self.failed:
                self.work.remove(job)
        shutil.rmtree(marker_dir, ignore_errors=True)
        if not any(p.name != "lock" for p in self.work.root.iterdir()):
            shutil.rmtree(self.work.root, ignore_errors=True)
        wall = time.time() - started
        planes = sum(r["planes"] for r in ranks)
        busy = [r["busy_s"] for r in ranks]
        return {
            "complete": self.finished,
            "skipped": plan["skipped"],
            "failed": self.failed,
            "planes": planes,
            "seconds": round(wall, 3),
            "planes_per_s": round(planes / wall, 4) if wall else None,
            "balance": round(min(busy) / max(busy), 3) if busy and max(busy) > 0 else 1.0,
            "ranks": ranks,
            "manifest": str(self.manifest.path),
        }


def summary_lines(result: dict) -> list[str]:
    lines = [
        f"{len(result['complete'])} file(s) dehazed, {len(result['skipped'])} already complete (skipped), "
        f"{len(result['failed'])} failed; {result['planes']} plane(s) in {result['seconds']:.1f} s "
        f"({result['planes_per_s'] or 0:.3g} planes/s)"
    ]
    if len(result["ranks"]) > 1:
        lines.append(
            "per process: "
            + ", ".join(f"rank {r['rank']}: {r['planes']} planes, {r['busy_s']:.1f} s busy" for r in result["ranks"])
            + f" (balance {result['balance']:.2f})"
        )
    for key, message in result["failed"].items():
        lines.append(f"FAILED {key}: {message}")
    lines.append(f"manifest: {result['manifest']}")
    if result["skipped"]:
        lines.append("(complete outputs are kept; --overwrite recomputes them)")
    return lines

"""Dehaze a whole experiment: every YX plane of every TIFF or OME-Zarr image of a folder, on every process,
resumable.

Work units are (file, plane). The main process checks all inputs, keeps the manifest
(``hazematching_manifest.json`` in the output folder: settings, model hash, per-file status) and
creates each output (final shape and metadata, all zeros) in a work folder; it then hands the plan
to every process, and each computes its share of the planes and writes them in place. A plane counts
as done once its line is in that process's log, written after its pixels were synced, so a relaunch
(with any number of processes) continues where the last run stopped. A finished file is renamed
to its final name, so every file under a final name is complete. Noise is keyed on (seed, input file
name, plane index), or on the seed alone with ``noise="package"``: results do not depend on how the
work was split.

Launch on several processes/GPUs/nodes with ``accelerate launch -m hazematching predict ...``; the
output folder must then be on a file system that all nodes share.
"""

import fcntl
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from hazematching.data.io import TIFF_SUFFIXES, DataError
from hazematching.data.omezarr import is_zarr
from hazematching.data.stack import PlaneReader, open_writer, parse_axes
from hazematching.inference.experiment.jobs import (
    JobError,
    check_writable,
    full_disk,
    list_inputs,
    make_jobs,
    result_settings,
)
from hazematching.inference.experiment.manifest import MANIFEST_NAME, Manifest
from hazematching.inference.experiment.monitor import Monitor
from hazematching.inference.experiment.schedule import balanced, plan_job, plane_seed
from hazematching.inference.experiment.workfolder import WORK_NAME, WorkFolder
from hazematching.inference.input_range import InputRangeWarning
from hazematching.run import RunError, atomic_write_bytes, load_model
from hazematching.settings import DEFAULT_NOISE


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
    noise: str = DEFAULT_NOISE,
    **options,
) -> dict:
    """Dehaze a TIFF or every TIFF of a folder plane by plane on all processes of this launch; returns
    the summary (also on non-main processes, with what they did). ``options`` go to ``predict_array``;
    ``noise`` is a key of ``schedule.NOISE_KEYING``."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object

    from hazematching.inference.predict import predict_array, resolve_device

    wanted = resolve_device(device) if device != "auto" else None
    state = PartialState(cpu=(wanted is not None and wanted.type == "cpu") or not torch.cuda.is_available())
    run_device = wanted if wanted is not None and wanted.type == "cpu" else state.device
    model_dir, input_path, output_path = Path(model_dir), Path(input_path), Path(output_path)
    single_input = is_zarr(input_path) or not input_path.is_dir()
    single_file = single_input and output_path.suffix.lower() in (*TIFF_SUFFIXES, ".zarr")
    folder = output_path.parent if single_file else output_path
    work = WorkFolder(folder / WORK_NAME)
    axes = parse_axes(axes) if axes else None

    plan, lock, failure = None, None, None
    if state.is_main_process:
        try:
            run = load_model(model_dir, device="cpu")
            settings = result_settings(run, model_dir, run_device, options, channel, axes, keep_samples, calibrated)
            plane_seed(0, noise, "", 0)  # an unknown mode fails here, before any output exists
            settings["noise"] = noise
            if run.objective == "mse" and (keep_samples or calibrated):
                raise RunError("a U-Net baseline run predicts one image: it has no samples and no std to calibrate")
            if calibrated and run.config.calibration is None:
                raise RunError(
                    "this run is not calibrated: run `hazematching calibrate --model RUN --data VAL_DIR` first"
                )
            if not single_input and folder.resolve() == input_path.resolve():
                raise JobError(
                    f"--output {output_path} is the input folder: outputs would mix with the inputs; choose another "
                    "--output"
                )
            inputs = list_inputs(input_path, recursive, exclude=None if single_input else output_path)
            jobs = make_jobs(inputs, input_path, output_path, single_file, keep_samples, run.objective == "mse")
            check_writable(folder)
            work.root.mkdir(exist_ok=True)
            lock = open(work.root / "lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise JobError(
                    f"another hazematching predict is writing to {folder}; wait for it or use another --output"
                ) from exc
            manifest = Manifest(folder / MANIFEST_NAME)
            plan = plan_job(
                jobs, manifest, work, settings, overwrite, channel, axes, keep_samples, single_file, run.normalization
            )
            for job in jobs:  # now, not only in the summary: a long job should not run hours unwarned
                if job.warning:
                    print(job.warning, file=sys.stderr)
        except Exception as exc:  # every process must hear of it, or the others wait forever
            failure = full_disk(exc, folder) or exc
            plan = {"error": f"{type(failure).__name__}: {failure}"}
    plan = broadcast_object_list([plan])[0]
    if "error" in plan:
        if lock is not None:
            lock.close()
        raise failure or JobError(f"the main process failed to start the job: {plan['error']}")

    launch_dir = work.root / f"launch-{plan['launch']}"
    blind = [rank for rank, seen in gather_object([(state.process_index, launch_dir.is_dir())]) if not seen]
    if blind:
        if lock is not None:
            lock.close()
        raise JobError(
            f"--output {output_path} is not shared between the processes: process(es) {blind} cannot see the "
            "folders process 0 made there; a multi-node launch needs an output folder on a file system that every "
            "node mounts, given as the same absolute path"
        )
    jobs = plan["jobs"]
    costs = [int(np.prod(j.info.plane_shape)) if j.info is not None else 0 for j in jobs]
    mine = balanced(plan["units"], costs, state.num_processes)[state.process_index]
    monitor = Monitor(jobs, work, plan, progress) if state.is_main_process else None
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
                        name: open_writer(
                            work.partial(job, name),
                            job.info,
                            job.offsets[name],
                            plan["settings"]["samples"] if name == "samples" else None,
                        )
                        for name in job.outputs
                    }
                image = reader.read(plane)
                seed = plane_seed(plan["settings"].get("seed", 0), noise, job.name, plane)
                with warnings.catch_warnings():  # reported once per file, at planning
                    warnings.simplefilter("ignore", InputRangeWarning)
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
                    writer.write_plane(plane, getattr(result, name))
                    writer.sync()
                work.log(job, state.process_index, f"done {plane}")
                computed += 1
            except (DataError, RunError, OSError, ValueError) as exc:
                if stop := full_disk(exc, folder):  # not this file's fault: stop, keep what is done
                    raise stop from exc
                broken.add(index)
                work.log(job, state.process_index, f"fail {plane} {exc}")
            busy += time.time() - tic
            if monitor is not None:
                monitor.poll()
    except BaseException:
        if lock is not None:  # a relaunch (even in this process) must be able to take the folder again
            lock.close()
        raise
    finally:
        close_current()
    mine_stats = {
        "rank": state.process_index,
        "planes": computed,
        "busy_s": round(busy, 3),
        "wall_s": round(time.time() - started, 3),
        "device": str(run_device),
    }
    marker = launch_dir / f"rank{state.process_index}.json"
    try:
        atomic_write_bytes(marker, json.dumps(mine_stats).encode())
    except OSError as exc:
        if lock is not None:
            lock.close()
        raise full_disk(exc, folder) or exc from exc
    if monitor is None:
        return {"rank": mine_stats}
    try:
        result = monitor.finish(state.num_processes, plan, started)
    finally:
        lock.close()
    if single_file and result["failed"]:  # one file asked for: its problem is the caller's error
        raise DataError(next(iter(result["failed"].values())))
    return result

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
from dataclasses import dataclass, replace
from pathlib import Path

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
from hazematching.inference.experiment.schedule import ExperimentPlan, plan_job, plane_seed
from hazematching.inference.experiment.workfolder import WORK_NAME, WorkFolder
from hazematching.inference.input_range import InputRangeWarning
from hazematching.run import RunError, atomic_write_bytes, load_model
from hazematching.settings import (
    DEFAULT_NOISE,
    SettingsRequest,
    describe_settings,
    refuse_point_predictor_outputs,
    resolve_options,
    speed_of,
)


@dataclass(frozen=True)
class Launch:
    """Where this process stands in the launch, and the folders of the job."""

    state: object  # accelerate's PartialState
    device: torch.device
    folder: Path  # where the outputs and the manifest go
    work: WorkFolder
    single_input: bool
    single_file: bool


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
    ``noise`` is a key of ``schedule.NOISE_KEYING``.

    Four steps: the main process plans (``plan_experiment``), every process receives the frozen plan
    (``share_plan``), computes its share of the planes (``compute_share``), and the main process
    finishes the files and reports (``Monitor.finish``)."""
    model_dir, input_path, output_path = Path(model_dir), Path(input_path), Path(output_path)
    launch = start_launch(device, input_path, output_path)
    axes = parse_axes(axes) if axes else None
    plan, lock, failure = None, None, None
    if launch.state.is_main_process:
        try:
            plan, lock = plan_experiment(
                launch, model_dir, input_path, output_path, options, channel, axes, overwrite, recursive,
                keep_samples, calibrated, noise,
            )  # fmt: skip
        except Exception as exc:  # every process must hear of it, or the others wait forever
            failure = full_disk(exc, launch.folder) or exc
    try:
        plan = share_plan(launch, plan, failure, output_path)
        mine = plan.share(launch.state.num_processes, launch.state.process_index)
        monitor = Monitor(plan, launch.work, progress) if launch.state.is_main_process else None
        options = dict(keep_samples=keep_samples, calibrated=calibrated, **speed_of(options))
        mine_stats, started = compute_share(launch, plan, mine, model_dir, monitor, progress, options)
    except BaseException:
        if lock is not None:  # a relaunch (even in this process) must be able to take the folder again
            lock.close()
        raise
    if monitor is None:
        return {"rank": mine_stats}
    try:
        result = monitor.finish(launch.state.num_processes, plan, started)
    finally:
        lock.close()
    if launch.single_file and result["failed"]:  # one file asked for: its problem is the caller's error
        raise DataError(next(iter(result["failed"].values())))
    return result


def start_launch(device: str, input_path: Path, output_path: Path) -> Launch:
    """This process's place in the launch (accelerate) and device, and where the job writes."""
    from accelerate import PartialState

    from hazematching.inference.predict import resolve_device

    wanted = resolve_device(device) if device != "auto" else None
    state = PartialState(cpu=(wanted is not None and wanted.type == "cpu") or not torch.cuda.is_available())
    run_device = wanted if wanted is not None and wanted.type == "cpu" else state.device
    single_input = is_zarr(input_path) or not input_path.is_dir()
    single_file = single_input and output_path.suffix.lower() in (*TIFF_SUFFIXES, ".zarr")
    folder = output_path.parent if single_file else output_path
    return Launch(state, run_device, folder, WorkFolder(folder / WORK_NAME), single_input, single_file)


def plan_experiment(
    launch: Launch,
    model_dir: Path,
    input_path: Path,
    output_path: Path,
    options: dict,
    channel: int | None,
    axes: str | None,
    overwrite: bool,
    recursive: bool,
    keep_samples: bool,
    calibrated: bool,
    noise: str,
) -> tuple[ExperimentPlan, object]:
    """Main process: check the request and every input, take the output folder's lock, create the
    outputs' work copies and decide what is left to compute; returns the plan and the held lock."""
    folder, work = launch.folder, launch.work
    run = load_model(model_dir, device="cpu")
    refuse_point_predictor_outputs(
        run.objective, keep_samples, calibrated, **{name: options.get(name) for name in SettingsRequest.SAMPLER},
        samples_per_call=options.get("samples_per_call"), noise=None if noise == DEFAULT_NOISE else noise,
    )  # fmt: skip
    inference = resolve_options(run.config, options)  # once: every plane uses it with its own seed
    settings = result_settings(
        run, model_dir, launch.device, inference, options, channel, axes, keep_samples, calibrated
    )
    plane_seed(0, noise, "", 0)  # an unknown mode fails here, before any output exists
    settings["noise"] = noise
    if calibrated and run.config.calibration is None:
        raise RunError("this run is not calibrated: run `hazematching calibrate --model RUN --data VAL_DIR` first")
    if not launch.single_input and folder.resolve() == input_path.resolve():
        raise JobError(
            f"--output {output_path} is the input folder: outputs would mix with the inputs; choose another --output"
        )
    inputs = list_inputs(input_path, recursive, exclude=None if launch.single_input else output_path)
    jobs = make_jobs(inputs, input_path, output_path, launch.single_file, keep_samples, run.objective == "mse")
    check_writable(folder)
    work.root.mkdir(exist_ok=True)
    lock = open(work.root / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.close()
        raise JobError(
            f"another hazematching predict is writing to {folder}; wait for it or use another --output"
        ) from exc
    try:
        manifest = Manifest(folder / MANIFEST_NAME)
        plan = plan_job(
            jobs, manifest, work, settings, overwrite, channel, axes, keep_samples, launch.single_file,
            run.normalization, inference,
        )  # fmt: skip
    except BaseException:
        lock.close()
        raise
    summary = describe_settings(run.config, inference) + (f"; seeds: {noise}" if run.objective == "cfm" else "")
    plan = replace(plan, summary=summary)
    for job in jobs:  # now, not only in the summary: a long job should not run hours unwarned
        if job.warning:
            print(job.warning, file=sys.stderr)
    from hazematching.core.tiles import window
    from hazematching.inference.predict import settings_warnings

    tile = window(inference.tile_size, inference.overlap, getattr(run.model, "stride", 1))[0]
    tiled = any(job.info is not None and max(job.info.out_shape[-2:]) > tile for job in jobs)
    for message, category in settings_warnings(run, inference, calibrated, tiled):
        warnings.warn(message, category, stacklevel=3)  # once for the job, not per plane
    return plan, lock


def share_plan(launch: Launch, plan: ExperimentPlan | None, failure: Exception | None, output_path: Path):
    """Every process gets the main process's plan, or its failure; all must see the launch's folder."""
    from accelerate.utils import broadcast_object_list, gather_object

    message = None if failure is None else f"{type(failure).__name__}: {failure}"
    plan, message = broadcast_object_list([plan, message])
    if message is not None:
        raise failure or JobError(f"the main process failed to start the job: {message}")
    launch_dir = launch.work.root / f"launch-{plan.launch}"
    blind = [rank for rank, seen in gather_object([(launch.state.process_index, launch_dir.is_dir())]) if not seen]
    if blind:
        raise JobError(
            f"--output {output_path} is not shared between the processes: process(es) {blind} cannot see the "
            "folders process 0 made there; a multi-node launch needs an output folder on a file system that every "
            "node mounts, given as the same absolute path"
        )
    return plan


def compute_share(
    launch: Launch,
    plan: ExperimentPlan,
    mine: list[tuple[int, int]],
    model_dir: Path,
    monitor: Monitor | None,
    progress: bool,
    options: dict,
) -> tuple[dict, float]:
    """This process's planes, one input and its outputs open at a time, each plane logged once its
    pixels are synced; a file that fails is logged and skipped, a full disk stops the job. Returns
    this process's statistics (also written to the launch folder for the main process) and when it
    started."""
    from hazematching.inference.predict import SETTINGS_WARNINGS, predict_array

    state, work, folder = launch.state, launch.work, launch.folder
    run = load_model(model_dir, device=launch.device)
    current, reader, writers, broken = None, None, {}, set()
    busy, computed, started = 0.0, 0, time.time()
    inner_progress = progress and state.is_main_process and len(plan.units) == 1

    def close_current():
        if reader is not None:
            reader.close()
        for writer in writers.values():
            writer.close()

    try:
        for index, plane in mine:  # in file order: one input and its outputs open at a time
            job = plan.jobs[index]
            if index in broken:
                continue
            tic = time.time()
            try:
                if index != current:
                    close_current()
                    current, reader, writers = index, None, {}
                    reader = PlaneReader(job.info)
                    samples = plan.inference.samples
                    writers = {
                        name: open_writer(
                            work.partial(job, name), job.info, job.offsets[name], samples if name == "samples" else None
                        )
                        for name in job.outputs
                    }
                image = reader.read(plane)
                with warnings.catch_warnings():  # reported once per file or job, at planning
                    for category in (InputRangeWarning, *SETTINGS_WARNINGS):
                        warnings.simplefilter("ignore", category)
                    result = predict_array(
                        run,
                        image,
                        progress=inner_progress,
                        job_planes=len(mine),
                        settings=plan.plane_settings(job, plane),
                        **options,
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
    finally:
        close_current()
    stats = {
        "rank": state.process_index,
        "planes": computed,
        "busy_s": round(busy, 3),
        "wall_s": round(time.time() - started, 3),
        "device": str(launch.device),
    }
    marker = work.root / f"launch-{plan.launch}" / f"rank{state.process_index}.json"
    try:
        atomic_write_bytes(marker, json.dumps(stats).encode())
    except OSError as exc:
        raise full_disk(exc, folder) or exc from exc
    return stats, started

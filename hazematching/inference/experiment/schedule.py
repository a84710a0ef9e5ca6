"""Which process computes which (file, plane), and the noise seed of each plane."""

import hashlib
import shutil
import uuid
from dataclasses import dataclass

from hazematching.data.io import DataError
from hazematching.data.stack import PlaneReader, SingleChannelError, open_stack
from hazematching.inference.experiment.jobs import MIN_SIZE, FileJob, JobError, input_stat
from hazematching.inference.experiment.manifest import Manifest
from hazematching.inference.experiment.workfolder import WorkFolder
from hazematching.inference.input_range import out_of_range
from hazematching.settings import NOISE_KEYING, InferenceSettings


@dataclass(frozen=True)
class ExperimentPlan:
    """What the main process decided, handed unchanged to every process: the files (each opened and
    checked, or failed), the (file index, plane) units still to compute, the files already complete,
    the result settings and this launch's id (its marker folder in the work folder)."""

    jobs: tuple[FileJob, ...]
    units: tuple[tuple[int, int], ...]
    skipped: tuple[str, ...]
    launch: str
    settings: dict  # what the manifest records: the inference settings and everything else that changes numbers
    inference: InferenceSettings  # resolved once; each plane gets its own seed (``plane_seed``)
    summary: str = ""  # ``settings.describe_settings``: the summary's settings line

    def share(self, world: int, rank: int) -> list[tuple[int, int]]:
        """The units process ``rank`` of ``world`` computes (the same answer on every process)."""
        costs = [j.info.plane_shape[0] * j.info.plane_shape[1] if j.info is not None else 0 for j in self.jobs]
        return balanced(list(self.units), costs, world)[rank]

    def plane_settings(self, job: FileJob, plane: int) -> InferenceSettings:
        """The resolved settings with this plane's seed."""
        seed = plane_seed(self.inference.seed, self.settings["noise"], job.name, plane)
        return self.inference.model_copy(update={"seed": seed})


def plane_seed(seed: int, noise: str, name: str, plane: int) -> int:
    """The seed ``predict_array`` gets for one plane under a ``NOISE_KEYING`` mode."""
    if noise not in NOISE_KEYING:
        raise ValueError(f"unknown noise keying {noise!r}: expected one of {', '.join(NOISE_KEYING)}")
    if noise == "package":
        return seed
    return derive_seed(seed, name, plane)


def derive_seed(seed: int, *keys: str | int) -> int:
    """A 31-bit seed from ``seed`` and keys (input file name, plane index): the noise of a plane then
    depends on what it is, not on which process computes it or in which order."""
    digest = hashlib.blake2b("/".join(map(str, (seed, *keys))).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def balanced(units: list[tuple[int, int]], costs: list[int], world: int) -> list[list[tuple[int, int]]]:
    """Give each unit to the process with the least work so far (same answer on every process)."""
    shares, load = [[] for _ in range(world)], [0] * world
    for unit in units:
        rank = min(range(world), key=lambda r: (load[r], r))
        shares[rank].append(unit)
        load[rank] += costs[unit[0]]
    return shares


def range_warning(job, normalization) -> str | None:
    """``input_range.out_of_range`` on the first, middle and last plane of a file, as one line naming it."""
    planes = sorted({0, job.info.planes // 2, job.info.planes - 1})
    with PlaneReader(job.info) as reader:
        problem = out_of_range(normalization, [reader.read(p) for p in planes])
    return f"warning: {job.input}: {problem}" if problem else None


def plan_job(
    jobs,
    manifest: Manifest,
    work: WorkFolder,
    settings: dict,
    overwrite: bool,
    channel,
    axes,
    keep_samples: bool,
    single_file: bool,
    normalization,
    inference: InferenceSettings,
) -> ExperimentPlan:
    """Main process: check inputs (each file's intensities against ``normalization``, the run's), refuse to
    mix settings, prepare work copies, list pending planes."""
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
    (work.root / f"launch-{launch}").mkdir()  # every process must see it: the output folder is shared
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
            try:
                job.info = open_stack(job.input, axes, channel, MIN_SIZE)
                note = None
            except SingleChannelError:
                if single_file:
                    raise
                # a folder mixing paired (multi-channel) and single-channel files: --channel picks the
                # channel of the former; the latter hold one image, dehazed as it is
                job.info = open_stack(job.input, axes, None, MIN_SIZE)
                note = (
                    f"warning: {job.input}: one channel, dehazed as it is (--channel {channel} applies to the files "
                    "with several)"
                )
            job.warning = "; ".join(w for w in (note, range_warning(job, normalization)) if w) or None
            entry.update(
                axes=job.info.axes, shape=list(job.info.shape), planes=job.info.planes, channel=job.info.channel
            )
            if overwrite:
                shutil.rmtree(work.folder(job), ignore_errors=True)
            work.prepare(job, settings, keep_samples)
            work.forget_failures(job)  # failures of an earlier launch are retried, not replayed
            done, _ = work.read_logs(job)
            units += [(index, p) for p in range(job.info.planes) if p not in done]
            entry.update(status="in progress", error=None, warning=job.warning)
        except DataError as exc:
            if single_file:
                raise
            job.error = str(exc)
            entry.update(status="failed", error=str(exc))
        manifest.files[job.key] = entry
    manifest.save()
    return ExperimentPlan(tuple(jobs), tuple(units), tuple(skipped), launch, settings, inference)

"""Progress of a whole job across processes, and its summary."""

import json
import os
import shutil
import time

from tqdm.auto import tqdm

from hazematching.inference.experiment.jobs import FileJob
from hazematching.inference.experiment.manifest import MANIFEST_NAME, Manifest
from hazematching.inference.experiment.schedule import ExperimentPlan
from hazematching.inference.experiment.workfolder import WorkFolder


class Monitor:
    """Main process: one progress bar over all processes (read from the plane logs), finishing files."""

    def __init__(self, plan: ExperimentPlan, work: WorkFolder, progress: bool):
        self.jobs, self.work = jobs, work = plan.jobs, work
        self.manifest = Manifest(work.root.parent / MANIFEST_NAME)
        self.open = {i for i, j in enumerate(jobs) if j.info is not None and j.key not in plan.skipped}
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
            if partial.is_dir():  # an OME-Zarr image: a folder cannot replace another in one step
                if job.outputs[name].is_dir():
                    shutil.rmtree(job.outputs[name])
                os.replace(partial, job.outputs[name])
            elif partial.exists():
                with open(partial, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(partial, job.outputs[name])
        self.work.remove(job)
        self.finished.append(job.key)
        self._set(job, status="complete", error=None, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def finish(self, world: int, plan: ExperimentPlan, started: float) -> dict:
        marker_dir = self.work.root / f"launch-{plan.launch}"
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
            "skipped": list(plan.skipped),
            "failed": self.failed,
            "warnings": {j.key: j.warning for j in self.jobs if j.warning},
            "planes": planes,
            "seconds": round(wall, 3),
            "planes_per_s": round(planes / wall, 4) if wall else None,
            "balance": round(min(busy) / max(busy), 3) if busy and max(busy) > 0 else 1.0,
            "ranks": ranks,
            "manifest": str(self.manifest.path),
            "settings": plan.summary,
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
    if result.get("settings"):
        lines.append(f"settings: {result['settings']}")
    for key, message in result["failed"].items():
        lines.append(f"FAILED {key}: {message}")
    for key, message in result.get("warnings", {}).items():
        lines.append(f"WARNING {key}: {message.removeprefix('warning: ')}")
    lines.append(f"manifest: {result['manifest']}")
    if result["skipped"]:
        lines.append("(complete outputs are kept; --overwrite recomputes them)")
    return lines

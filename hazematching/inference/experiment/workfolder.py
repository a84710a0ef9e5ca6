"""The work folder: outputs being written, per-process logs of finished planes (what makes a job resumable)."""

import json
import shutil
from pathlib import Path

from hazematching.data.stack import create_output, output_suffix
from hazematching.inference.experiment.jobs import FileJob, input_stat
from hazematching.run import atomic_write_bytes
from hazematching.version import __version__

WORK_NAME = ".hazematching-work"


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
        return self.folder(job) / f"{name}{output_suffix(job.info)}"

    def prepare(self, job: FileJob, settings: dict, keep_samples: bool) -> None:
        """Reuse the work copies of an interrupted run with the same settings, else start afresh."""
        folder, info = self.folder(job), job.info
        state = {
            "settings": settings,
            "input_size": input_stat(job.input)[0],
            "axes": info.axes,
            "shape": list(info.shape),
        }
        state_path = folder / "state.json"
        try:
            old = json.loads(state_path.read_text())
            if old["state"] == json.loads(json.dumps(state, default=str)) and all(
                self.partial(job, name).exists() for name in job.outputs
            ):
                job.offsets = old["offsets"]
                return
        except (OSError, ValueError, KeyError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        description = f"hazematching {__version__} {json.dumps(settings, default=str)}"
        for name in job.outputs:
            axes, shape = info.output_layout(settings["samples"] if name == "samples" else None)
            job.offsets[name] = create_output(self.partial(job, name), info, axes, shape, f"{name}: {description}")
        atomic_write_bytes(state_path, json.dumps({"state": state, "offsets": job.offsets}, default=str).encode())

    def read_logs(self, job: FileJob) -> tuple[set[int], dict[int, str]]:
        """Planes done and planes failed (with the message), from every process's log."""
        done, failed = set(), {}
        for log in self.folder(job).glob("rank*.log"):
            # only whole lines: another process may be half-way through writing its last one ("done 1" of
            # "done 12"), which a shared file system can show to readers
            for line in log.read_text().split("\n")[:-1]:
                parts = line.split(" ", 2)
                if len(parts) >= 2 and parts[1].isdigit():
                    if parts[0] == "done":
                        done.add(int(parts[1]))
                    elif parts[0] == "fail":
                        failed[int(parts[1])] = parts[2] if len(parts) > 2 else "failed"
        return done, failed

    def forget_failures(self, job: FileJob) -> None:
        """Drop the ``fail`` lines of earlier launches: those planes are computed again, not reported
        failed again (a full disk that has been freed since, a file fixed in place)."""
        for log in self.folder(job).glob("rank*.log"):
            lines = log.read_text().split("\n")[:-1]
            kept = [line for line in lines if not line.startswith("fail ")]
            if len(kept) != len(lines):
                atomic_write_bytes(log, "".join(line + "\n" for line in kept).encode())

    def log(self, job: FileJob, rank: int, line: str) -> None:
        with open(self.folder(job) / f"rank{rank}.log", "a") as f:
            f.write(line.replace("\n", " ") + "\n")
            f.flush()

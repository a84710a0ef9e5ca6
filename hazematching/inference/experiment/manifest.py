"""``hazematching_manifest.json``: per output file, its status and the settings it was made with."""

import json
import time
from pathlib import Path

from hazematching.inference.experiment.jobs import OMITTED_DEFAULTS, FileJob, JobError, input_stat
from hazematching.run import atomic_write_bytes
from hazematching.version import __version__

MANIFEST_NAME = "hazematching_manifest.json"


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
            and all(p.exists() for p in job.outputs.values())
        )

    def conflicts(self, settings: dict, keys: list[str]) -> list[str]:
        """Complete outputs among ``keys`` made with other settings, as 'file: key a -> b' lines."""
        lines = []
        for key in keys:
            entry = self.files.get(key, {})
            old = entry.get("settings") or {}
            if entry.get("status") == "complete" and old != settings:

                def value(values: dict, k: str):
                    return values.get(k, OMITTED_DEFAULTS.get(k))  # an omitted setting is its default

                diff = [
                    f"{k} {value(old, k)!r} -> {value(settings, k)!r}"
                    for k in sorted(set(old) | set(settings))
                    if value(old, k) != value(settings, k) and k != "model_sha256"
                ]
                if old.get("model_sha256") != settings.get("model_sha256"):
                    diff.insert(0, "another model")
                lines.append(f"{key}: {', '.join(diff)}")
        return lines

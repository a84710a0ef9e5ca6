"""Checkpoint folders that are either complete or invisible.

A checkpoint is written into ``checkpoints/.tmp-checkpoint-<step>`` and renamed to
``checkpoint-<step>`` only after every file is on disk, so a kill at any moment leaves nothing that
``latest`` would pick up half written. Leftover ``.tmp-*`` folders are removed on the next save.
"""

import os
import re
import shutil
from pathlib import Path

_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = _PATTERN.match(path.name)
        if match and path.is_dir() and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_resume(value: str | None, checkpoint_dir: Path) -> Path | None:
    """``latest`` -> newest complete checkpoint or None (fresh start); a path must be a checkpoint."""
    if value is None:
        return None
    if value == "latest":
        return latest_checkpoint(checkpoint_dir)
    path = Path(value)
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(
            f"--resume-from-checkpoint {value}: not a complete checkpoint folder (no {COMPLETE_MARKER})"
        )
    return path


def temporary_dir(checkpoint_dir: Path, step: int) -> Path:
    return Path(checkpoint_dir) / f".tmp-checkpoint-{step}"


def clean_temporary(checkpoint_dir: Path) -> None:
    for path in Path(checkpoint_dir).glob(".tmp-checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


def publish(tmp_dir: Path, step: int) -> Path:
    """Atomically turn a fully written temporary folder into ``checkpoint-<step>``."""
    final = tmp_dir.parent / f"checkpoint-{step}"
    if final.exists():  # same step written again after a resume: replace the old one
        shutil.rmtree(final)
    os.replace(tmp_dir, final)
    fd = os.open(tmp_dir.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def rotate(checkpoint_dir: Path, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``total_limit``; returns what was removed."""
    if total_limit is None:
        return []
    checkpoints = list_checkpoints(checkpoint_dir)
    removed = checkpoints[: max(0, len(checkpoints) - total_limit)]
    for path in removed:
        shutil.rmtree(path)
    return removed

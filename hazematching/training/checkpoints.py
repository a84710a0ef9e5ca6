"""Checkpoint folders that are either complete or invisible.

A checkpoint is written into ``checkpoints/.tmp-checkpoint-<step>`` by every process and renamed to
``checkpoint-<step>`` by the main process only after all processes have finished writing (a barrier)
and every process's files are found there (``missing_process_files``), so neither a kill at any
moment nor a slow process leaves anything that ``latest`` would pick up half written. Leftover
``.tmp-*`` folders are removed on the next save.
"""

import os
import re
import shutil
from pathlib import Path

_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"
_REPLACED = ".tmp-replaced-"


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; a step whose re-publication was interrupted (``publish``)
    is its set-aside previous version."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = {}
    for path in checkpoint_dir.iterdir():
        match = _PATTERN.match(path.name.removeprefix(_REPLACED))
        if match and path.is_dir() and (path / COMPLETE_MARKER).is_file():
            step = int(match.group(1))
            if step not in found or not path.name.startswith(_REPLACED):
                found[step] = path
    return [found[step] for step in sorted(found)]


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


def missing_process_files(folder: Path, num_processes: int) -> list[str]:
    """The per-process files of a checkpoint written by ``num_processes`` processes that are not in
    ``folder``: accelerate's ``random_states_<rank>.pkl`` and, for DeepSpeed ZeRO, each rank's
    optimizer shard (``*zero_pp_rank_<rank>_*optim_states.pt``). Non-empty means some process wrote
    elsewhere (an output folder that is not shared between nodes) or has not finished."""
    folder = Path(folder)
    missing = [f"random_states_{rank}.pkl" for rank in range(num_processes)]
    missing = [name for name in missing if not (folder / name).is_file()]
    for engine in (p for p in folder.iterdir() if p.is_dir() and any(p.glob("*model_states.pt"))):
        zero3 = any(engine.glob("zero_pp_rank_*_model_states.pt"))  # ZeRO-3 shards the weights too
        for rank in range(num_processes):
            if not any(engine.glob(f"*zero_pp_rank_{rank}_mp_rank_*optim_states.pt")):
                missing.append(f"{engine.name}/*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
            if zero3 and not (engine / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").is_file():
                missing.append(f"{engine.name}/zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
    return missing


def temporary_dir(checkpoint_dir: Path, step: int) -> Path:
    return Path(checkpoint_dir) / f".tmp-checkpoint-{step}"


def clean_temporary(checkpoint_dir: Path) -> None:
    """Remove unfinished folders; a set-aside checkpoint stays while it is the only copy of its step."""
    for path in Path(checkpoint_dir).glob(".tmp-*"):
        if path.name.startswith(_REPLACED) and not (path.parent / path.name.removeprefix(_REPLACED)).is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)


def publish(tmp_dir: Path, step: int) -> Path:
    """Atomically turn a fully written temporary folder into ``checkpoint-<step>``."""
    final = tmp_dir.parent / f"checkpoint-{step}"
    if final.exists():  # same step written again after a resume: the old one stays until the new is in place
        old = tmp_dir.parent / f"{_REPLACED}checkpoint-{step}"  # found by list_checkpoints until the swap is done
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp_dir, final)
        shutil.rmtree(old)
    else:
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

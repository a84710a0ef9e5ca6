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
SUPERSEDED = "superseded"


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


def checkpoint_step(path: Path) -> int:
    return int(_PATTERN.match(Path(path).name.removeprefix(_REPLACED)).group(1))


def set_aside_newer(run_dir: Path, step: int, run_step: int | None) -> Path | None:
    """Before a run goes back to an older checkpoint (``step``) than what it had reached: move its newer
    checkpoints and copy its ``model.safetensors``, ``config.json``, logs and sample grids to
    ``superseded/step-<newest>/``, so that resuming neither overwrites nor deletes anything (and ``latest``
    then finds the checkpoint resumed from). Returns that folder, or None when nothing is newer."""
    run_dir = Path(run_dir)
    newer = [path for path in list_checkpoints(run_dir / "checkpoints") if checkpoint_step(path) > step]
    newest = max([run_step or 0, *map(checkpoint_step, newer)])
    if newest <= step:
        return None
    target = run_dir / SUPERSEDED / f"step-{newest}"
    for attempt in range(2, 1000):  # the same step superseded twice: step-N-2, ...
        if not target.exists():
            break
        target = run_dir / SUPERSEDED / f"step-{newest}-{attempt}"
    staging = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "checkpoints").mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, staging / name)
    if (run_dir / "logs").is_dir():
        shutil.copytree(run_dir / "logs", staging / "logs")
    samples = run_dir / "samples"
    newer_grids = [g for g in samples.glob("step-*.png") if int(re.sub(r"\D", "", g.stem) or 0) > step]
    if newer_grids:
        (staging / "samples").mkdir()
        for grid in newer_grids:
            shutil.copy2(grid, staging / "samples" / grid.name)
    os.replace(staging, target)  # complete copies first; then the checkpoints leave checkpoints/
    for path in newer:
        os.replace(path, target / "checkpoints" / path.name.removeprefix(_REPLACED))
    return target


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

"""Fault injection for the distributed tests: run a script or module with one process made slow.

    accelerate launch --config_file C tests/distributed/slow_rank.py trainer/train.py ARGS...
    accelerate launch --config_file C tests/distributed/slow_rank.py -m hazematching predict ARGS...

Read from the environment (so the launcher passes it to every process unchanged):

- ``SLOW_RANK``: the global rank to slow down (default 1);
- ``SLOW_DELAY``: seconds added at each point (default 3);
- ``SLOW_POINTS``: comma-separated points, each ``module:attribute`` (a callable is delayed before it
  runs, e.g. ``torch:save``), or ``torn-log`` (the experiment runner's plane log lines are written
  in two halves with the delay between them, as a slow shared file system may show them), or
  ``stale-listing`` (this process does not see the newest checkpoint, as a node whose NFS client
  caches the directory listing).

``SLOW_LOG`` names a file that each delayed call appends to, so that a test can tell the delay hit.
Nothing here is shipped: it lives with the tests and patches the process it starts.
"""

import functools
import importlib
import os
import runpy
import sys
import time


def _log(point: str) -> None:
    path = os.environ.get("SLOW_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {point}\n")


def _delay_call(owner, name: str, point: str, delay: float) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def slow(*args, **kwargs):
        _log(point)
        time.sleep(delay)
        return original(*args, **kwargs)

    setattr(owner, name, slow)


def _torn_log(delay: float) -> None:
    from hazematching.inference.experiment.workfolder import WorkFolder

    def log(self, job, rank, line):
        text = line.replace("\n", " ") + "\n"
        with open(self.folder(job) / f"rank{rank}.log", "a") as f:
            f.write(text[:6])  # "done 1" of "done 12": a reader in between sees a different plane
            f.flush()
            _log("torn-log")
            time.sleep(delay)
            f.write(text[6:])
            f.flush()

    WorkFolder.log = log


def _stale_listing() -> None:
    from hazematching.training import checkpoints

    original = checkpoints.list_checkpoints

    def stale(checkpoint_dir):
        found = original(checkpoint_dir)
        if found:
            _log("stale-listing")
        return found[:-1]

    checkpoints.list_checkpoints = stale


def install() -> None:
    if os.environ.get("RANK", "0") != os.environ.get("SLOW_RANK", "1"):
        return
    delay = float(os.environ.get("SLOW_DELAY", "3"))
    for point in filter(None, os.environ.get("SLOW_POINTS", "torch:save").split(",")):
        if point == "torn-log":
            _torn_log(delay)
            continue
        if point == "stale-listing":
            _stale_listing()
            continue
        module_name, attribute = point.split(":")
        owner = importlib.import_module(module_name)
        *parents, name = attribute.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        _delay_call(owner, name, point, delay)


if __name__ == "__main__":
    install()
    if sys.argv[1] == "-m":
        sys.argv = [sys.argv[2], *sys.argv[3:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
        runpy.run_path(sys.argv[0], run_name="__main__")

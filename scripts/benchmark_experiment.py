"""Planes/s of a whole-experiment prediction on 1 process vs N processes, side by side in one run.

Writes --files ImageJ ZYX stacks of --planes planes each, runs `python -m hazematching predict` on
them once in one process and once under `accelerate launch` with --config (N processes), checks that
both wrote identical files and prints planes/s of each, the ratio and the per-process balance.

    python scripts/benchmark_experiment.py --model demo/run
    python scripts/benchmark_experiment.py --model runs/x --config accelerate_configs/multi_gpu.yaml   # GPUs
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], threads: int | None) -> tuple[float, str]:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{(result.stdout + result.stderr)[-3000:]}")
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", default=str(REPO / "accelerate_configs" / "cpu_2proc.yaml"))
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i in range(args.files):
            stack = (rng.gamma(2.0, 60.0, (args.planes, args.size, args.size)) + 100).astype(np.uint16)
            tifffile.imwrite(src / f"field{i}.tif", stack, imagej=True, metadata={"axes": "ZYX"})
        flags = [
            "--model",
            args.model,
            "--input",
            str(src),
            "--samples",
            str(args.samples),
            "--steps",
            str(args.steps),
            "--quiet",
        ]
        one_s, one_log = run([sys.executable, "-m", "hazematching", "predict", *flags, "--output", f"{tmp}/one"], None)
        many_s, many_log = run(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                args.config,
                "-m",
                "hazematching",
                "predict",
                *flags,
                "--output",
                f"{tmp}/many",
            ],
            None,
        )
        for path in sorted(Path(tmp, "one").glob("*.tif")):
            a, b = tifffile.imread(path), tifffile.imread(Path(tmp, "many", path.name))
            if not np.allclose(a, b, rtol=1e-5, atol=1e-4 * float(np.abs(a).max())):
                raise SystemExit(f"{path.name}: 1-process and multi-process outputs differ")
        rate = lambda log: float(re.search(r"\(([\d.e+-]+) planes/s\)", log).group(1))  # noqa: E731
        total = args.files * args.planes
        print(f"{total} planes of {args.size}^2, K={args.samples}, N={args.steps}; outputs identical")
        print(f"1 process : {rate(one_log):.3f} planes/s in the job ({one_s:.1f} s with start-up)")
        print(
            f"N processes ({Path(args.config).name}): {rate(many_log):.3f} planes/s in the job ({many_s:.1f} s with "
            "start-up)"
        )
        print(next(line for line in many_log.splitlines() if line.startswith("per process")))
        print(f"ratio N/1 = {rate(many_log) / rate(one_log):.2f} (job), {one_s / many_s:.2f} (wall, start-up included)")


if __name__ == "__main__":
    main()

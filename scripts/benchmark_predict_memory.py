"""Peak resident memory of `hazematching predict` on a large image, against a budget.

Makes a SIZE x SIZE float32 TIFF from simulated widefield tiles, runs `hazematching predict` in a
child process and reports its peak RSS (the child's own maxrss, so this script's memory is not counted).

    python scripts/benchmark_predict_memory.py --model demo/run --size 4096
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

BUDGET_GIB = 4.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--tiles-per-call", type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 60.0, (args.size, args.size)).astype(np.float32) + 100
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "big.tif", Path(tmp) / "big_dehazed.tif"
        tifffile.imwrite(src, image)
        del image
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "hazematching.cli",
                "predict",
                "--model",
                args.model,
                "--input",
                str(src),
                "--output",
                str(out),
                "--samples",
                str(args.samples),
                "--steps",
                str(args.steps),
                "--tile-size",
                str(args.tile_size),
                "--tiles-per-call",
                str(args.tiles_per_call),
                "--device",
                "cpu",
            ],
            check=True,
        )
        elapsed = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    print(
        f"predict {args.size}^2, K={args.samples}, N={args.steps}, tile {args.tile_size}, "
        f"{args.tiles_per_call} tiles per call: "
        f"{elapsed:.0f} s, peak RSS {peak_gib:.2f} GiB; budget {BUDGET_GIB} GiB -> ratio {peak_gib / BUDGET_GIB:.2f}"
    )


if __name__ == "__main__":
    main()

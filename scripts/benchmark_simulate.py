"""Time `hazematching simulate` for the demo set against its budget (24 pairs of 256^2 in <= 60 s).

python scripts/benchmark_simulate.py [--num-images 24] [--size 256]
"""

import argparse
import os
import tempfile
import time

from hazematching.data.simulate import simulate_dataset

BUDGET_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-images", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        simulate_dataset(out, args.num_images, args.size, seed=0, progress=False)
        elapsed = time.perf_counter() - start
    per_image = elapsed / args.num_images
    print(
        f"{args.num_images} pairs of {args.size}^2 on {os.cpu_count()} CPU cores: {elapsed:.1f} s ({per_image:.2f} "
        "s/pair)"
    )
    print(
        f"budget {BUDGET_S:.0f} s -> time / budget = {elapsed / BUDGET_S:.2f} "
        f"({'OK' if elapsed <= BUDGET_S else 'OVER BUDGET'})"
    )


if __name__ == "__main__":
    main()

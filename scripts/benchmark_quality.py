"""Quality on a fresh held-out simulated set: widefield input vs U-Net baseline vs HazeMatching.

Simulates training data (seed 0) and a held-out set with a seed never used for training, trains
HazeMatching and the U-Net point predictor (same backbone) for the same budget with
trainer/train.py, evaluates both with `hazematching evaluate` and prints the table.

    python scripts/benchmark_quality.py --workdir bench/quality --max-steps 1000
"""

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hazematching.data.simulate import simulate_dataset
from hazematching.evaluation.evaluate import evaluate, markdown_table

REPO = Path(__file__).resolve().parents[1]


def train(data: Path, out: Path, objective: str, args) -> str:
    """Train unless the run exists (then the earlier run is reused); returns the time as text."""
    if (out / "model.safetensors").exists():
        return "reused"
    start = time.perf_counter()
    cmd = [
        sys.executable,
        str(REPO / "trainer" / "train.py"),
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--objective",
        objective,
        "--max-steps",
        str(args.max_steps),
        "--batch-size",
        str(args.batch_size),
        "--crop-size",
        str(args.crop_size),
        "--lr",
        str(args.lr),
        "--checkpointing-steps",
        str(args.max_steps),
        "--validation-steps",
        "0",
        "--seed",
        "0",
    ]
    subprocess.run(cmd, check=True)
    return f"{time.perf_counter() - start:.0f} s"


def prepare_data(args) -> tuple[Path, Path]:
    """Training pairs (seed 0) and a held-out set simulated with a seed never used for training."""
    data, heldout = args.workdir / "data", args.workdir / "heldout"
    if not data.exists():
        simulate_dataset(data, args.num_images, args.size, seed=0)
    if not heldout.exists():
        raw = args.workdir / "heldout_raw"
        simulate_dataset(raw, args.heldout_images, args.size, seed=args.heldout_seed)
        heldout.mkdir(parents=True)
        for path in raw.rglob("*.tif"):
            shutil.move(str(path), heldout / path.name)
        shutil.rmtree(raw)
    return data, heldout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Data and training budget flags, shared with benchmark_solvers.py."""
    parser.add_argument("--workdir", type=Path, default=Path("bench/quality"))
    parser.add_argument("--num-images", type=int, default=40, help="simulated training pairs (train+val)")
    parser.add_argument("--heldout-images", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--heldout-seed", type=int, default=1001)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    data, heldout = prepare_data(args)
    t_hm = train(data, args.workdir / "hazematching", "cfm", args)
    t_unet = train(data, args.workdir / "unet", "mse", args)
    result = evaluate(
        args.workdir / "hazematching",
        heldout,
        args.workdir / "evaluation",
        baseline_dir=args.workdir / "unet",
        samples=args.samples,
        steps=args.steps,
        seed=0,
    )
    print(
        f"\nbudget: {args.max_steps} steps x batch {args.batch_size} x {args.crop_size}^2 crops for each model "
        f"(training time here: {t_hm} and {t_unet}); {args.num_images} training pairs of {args.size}^2 (seed 0); "
        f"held-out: {args.heldout_images} pairs (seed {args.heldout_seed}); sampler: K={args.samples}, "
        f"N={args.steps} Euler steps"
    )
    print(markdown_table(result["mean"]))
    gain = result["mean"]["HazeMatching MMSE"]["psnr"] - result["mean"]["widefield input"]["psnr"]
    print(f"HazeMatching MMSE vs widefield input: {gain:+.2f} dB PSNR")


if __name__ == "__main__":
    main()

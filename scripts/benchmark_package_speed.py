"""How long a biologist waits: `bioimageio predict` of an exported package on a 1024² image, for the
package exported with default settings (the run's tuned setting when `hazematching tune` stored one)
beside Euler-20 at the same K, with the quality of each setting on held-out pairs, in one run.

Both packages are made by `hazematching export` from the same run; both predictions run in child
processes limited to --threads CPU threads (as a laptop running deepImageJ or bioimageio.core would).
Quality (MMSE PSNR, MicroMS3IM, one sample's PSNR, calibration slope) is `hazematching tune`'s
measurement of the same settings on --data (images of at least 161 px a side).

    python scripts/benchmark_package_speed.py --model demo/run --data demo/data/val
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def timed_predict(package: Path, image: Path, out: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "bioimageio.core", "predict", "--inputs", str(image)]
    cmd += ["--outputs", str(out / "{output_id}.tif"), str(package)]
    tic = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
    if result.returncode != 0:
        raise SystemExit(f"bioimageio predict failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder")
    parser.add_argument("--data", required=True, help="held-out pairs (as for hazematching tune)")
    parser.add_argument("--size", type=int, default=1024, help="edge of the timed image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from hazematching.data.io import read_split
    from hazematching.evaluation.tune import measure
    from hazematching.export import export_model
    from hazematching.run import load_model
    from hazematching.settings import resolve_settings

    torch.set_num_threads(args.threads)
    run = load_model(Path(args.model))
    default = resolve_settings(run.config)
    settings = {"default export": (default.solver, default.steps), "Euler-20": ("euler", 20)}
    rows = {
        r.solver + str(r.steps): r
        for r in measure(run, Path(args.data), (default.samples,), tuple(settings.values()), seed=args.seed)
    }
    pairs = read_split(Path(args.data))
    reps = -(-args.size // min(pairs[0].input.shape))
    image = np.tile(pairs[0].input, (reps, reps))[: args.size, : args.size].astype(np.float32)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tifffile.imwrite(tmp / "image.tif", image)
        for label, (solver, steps) in settings.items():
            package = tmp / f"{solver}{steps}.zip"
            options = {} if label == "default export" else dict(solver=solver, steps=steps)
            export_model(Path(args.model), package, **options)
            seconds = timed_predict(package, tmp / "image.tif", tmp / f"out-{solver}{steps}", args.threads)
            row = rows[solver + str(steps)]
            table.append(
                dict(
                    setting=label,
                    solver=solver,
                    steps=steps,
                    samples=default.samples,
                    evaluations_per_pixel=default.samples * row.evaluations,
                    seconds=round(seconds, 1),
                    mmse_psnr=round(row.psnr, 3),
                    ms3im=None if row.ms3im is None else round(row.ms3im, 4),
                    sample_psnr=round(row.sample_psnr, 3),
                    calibration_slope=round(row.calibration_slope, 3),
                )
            )
    print(f"bioimageio predict of a {args.size}² image, {args.threads} CPU threads; quality on {len(pairs)} pairs")
    print(
        "| setting | solver | steps | K | evaluations/pixel | seconds | MMSE PSNR | MicroMS3IM | sample PSNR | slope |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")
    fast, ref = table
    print(
        json.dumps(
            {
                "speedup": round(ref["seconds"] / fast["seconds"], 2),
                "psnr_loss_db": round(ref["mmse_psnr"] - fast["mmse_psnr"], 3),
                "target_60s_met": fast["seconds"] <= 60 and ref["mmse_psnr"] - fast["mmse_psnr"] <= 0.3,
            }
        )
    )


if __name__ == "__main__":
    main()

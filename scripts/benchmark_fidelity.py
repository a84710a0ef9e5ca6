"""MMSE fidelity against the U-Net at a fraction of the network evaluations (issue 25), in one run.

For each data set (the committed pairs in tests/assets/sim, held out: their val/ and test/; and an
independently simulated set: training seed 0, held-out seed 1001, as benchmark_quality.py), trains
with trainer/train.py at one budget: the U-Net point predictor (--objective mse), HazeMatching with
the paper's objective (t ~ U[0, 1)) and HazeMatching with a fraction of anchor items
(--mean-anchor-fraction: x = 0, t = 0, the target as velocity). Then, on the held-out pairs, for
each way of making the MMSE:

- "samples": the mean of K posterior samples (K x N network evaluations per pixel, today's);
- "Euler-2": the mean of K two-step samples (a few-step sampler: 2K evaluations);
- "anchor": v(0, 0, c), the network's posterior-mean prediction (1 evaluation; ``--mmse anchor``);
- "antithetic": the mean of K samples drawn in antithetic pairs (x0, -x0) (``--sample-noise
  antithetic``), at today's K and N and at a few-evaluation K and N (``--few-samples``/``--few-steps``);
  these rows' std, first sample and slope are their own samples'.
- "anchor, antithetic std": the anchor's MMSE with the std of the antithetic samples at today's K
  and N (``--mmse anchor --sample-noise antithetic``).

Prints MMSE PSNR / MS-SSIM / MicroMS3IM (also with the target's background for both images, see
``micro_ms3im_target_background``), one sample's PSNR / MicroMS3IM / FSIM / GMSD (the first of
the K samples), the calibration slope a of RMSE = a RMV + b (std of the K samples against the error
of that MMSE, on the held-out pixels), NFE per pixel for the MMSE and the std, training wall time.

    python scripts/benchmark_fidelity.py --workdir bench/fidelity --max-steps 600 --seeds 0,1,2
"""

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hazematching.data.io import read_split
from hazematching.evaluation import metrics
from hazematching.evaluation.calibration import calibration_curve, fit_calibration
from hazematching.inference.predict import predict_array
from hazematching.run import load_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from benchmark_quality import add_arguments, prepare_data  # noqa: E402  (one definition of the simulated set)


def train(data: Path, out: Path, flags: list[str], args, seed: int) -> float:
    """Train unless the run exists (an earlier run is reused); returns its training wall time in seconds."""
    timing = out / "train_seconds.txt"
    if (out / "model.safetensors").exists() and timing.exists():
        return float(timing.read_text())
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    cmd = [sys.executable, str(REPO / "trainer" / "train.py"), "--data", str(data), "--output-dir", str(out)]
    cmd += ["--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size)]
    cmd += ["--crop-size", str(args.crop_size), "--lr", str(args.lr), "--seed", str(seed)]
    cmd += ["--checkpointing-steps", str(args.max_steps), "--validation-steps", "0", *flags]
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    timing.write_text(f"{seconds:.1f}")
    return seconds


def mmse_rows(run, pairs, args) -> dict[str, dict]:
    """Every MMSE estimate of one flow-matching run on the held-out pairs. The independent-noise rows
    share the std and the first sample of today's setting (K x N independent samples); the antithetic
    rows have their own samples, so their std, first sample and slope are theirs."""
    k, n = args.samples, args.steps
    ways = {  # (samples, steps, mmse, sample noise)
        f"samples K={k} Euler-{n}": (k, n, "samples", "independent"),
        f"Euler-2 K={k}": (k, 2, "samples", "independent"),
        "anchor v(0, 0, c)": (1, 1, "anchor", "independent"),
        f"antithetic K={k} Euler-{n}": (k, n, "samples", "antithetic"),
        f"antithetic K={args.few_samples} Euler-{args.few_steps}": (
            args.few_samples,
            args.few_steps,
            "samples",
            "antithetic",
        ),
    }
    rows = {
        name: {
            "mmse": [],
            "sample": [],
            "std": [],
            "error": [],
            "nfe": 1 if mmse == "anchor" else kk * nn,
            "std_nfe": kk * nn if noise == "antithetic" else k * n,
        }
        for name, (kk, nn, mmse, noise) in ways.items()
    }
    for pair in pairs:
        options = dict(solver="euler", seed=0, progress=False)
        shared = predict_array(  # the samples' mean even where the run's MMSE is the anchor
            run,
            pair.input,
            samples=k,
            steps=n,
            keep_samples=True,
            mmse="samples",
            sample_noise="independent",
            **options,
        )
        for name, (kk, nn, mmse, noise) in ways.items():
            if (kk, nn, mmse, noise) == (k, n, "samples", "independent"):
                own = shared
            else:
                keep = noise == "antithetic"  # its own samples: its std and first sample
                own = predict_array(
                    run, pair.input, samples=kk, steps=nn, mmse=mmse, sample_noise=noise, keep_samples=keep, **options
                )
            spread = own if noise == "antithetic" else shared
            rows[name]["mmse"].append(image_row(own.mean, pair.target))
            rows[name]["sample"].append(image_row(spread.samples[0], pair.target, structure=True))
            rows[name]["std"].append(spread.std.ravel())
            rows[name]["error"].append((own.mean - pair.target).ravel())
    # The anchor's MMSE (1 NFE) beside the std of today's K and N antithetic samples: no new evaluations.
    anchor, antithetic = rows["anchor v(0, 0, c)"], rows[f"antithetic K={k} Euler-{n}"]
    rows["anchor, antithetic std"] = anchor | {key: antithetic[key] for key in ("sample", "std", "std_nfe")}
    return rows


def image_row(image: np.ndarray, target: np.ndarray, structure: bool = False) -> dict:
    row = {"psnr": metrics.range_invariant_psnr(image, target), "ms_ssim": metrics.ms_ssim(image, target)}
    if structure:
        row |= {"fsim": metrics.fsim(image, target), "gmsd": metrics.gmsd(image, target)}
    if metrics.micro_ms3im_problem([target.shape], ["held-out"]) is None:
        row["micro_ms3im"] = metrics.micro_ms3im(image, target)
        row["micro_ms3im_shared"] = micro_ms3im_target_background(image, target)
    return row


def micro_ms3im_target_background(image: np.ndarray, target: np.ndarray) -> float:
    """MicroMS3IM with one background for both images: the image is first mapped onto the target's
    intensities by least squares (as the range-invariant PSNR does), then both get the target's 3rd
    percentile as offset. MicroMS3IM's own offset is each image's 3rd percentile, which rises as an
    image gets smoother (a mean of more samples, or the U-Net), and the dark regions' luminance term
    then penalises the smoother image; this column measures the structure without that effect."""
    from microssim import micro_multiscale_structural_similarity
    from microssim.image_processing.background import get_background

    image, target = np.asarray(image, np.float64), np.asarray(target, np.float64)
    design = np.stack([image.ravel(), np.ones(image.size)], axis=1)
    scale, offset = np.linalg.lstsq(design, target.ravel(), rcond=None)[0]
    background = get_background(target)
    return float(
        micro_multiscale_structural_similarity(
            target, scale * image + offset, offset_gt=background, offset_pred=background
        )
    )


def mean_of(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if key in r]
    return f"{np.mean(values):.3f}" if len(values) == len(rows) else "–"


def seed_spread(per_seed: list[list[dict]]) -> str:
    """Half the range of the seeds' mean PSNRs: how far one training seed can move the number."""
    return spread([np.mean([r["psnr"] for r in rows]) for rows in per_seed])


def spread(values: list[float]) -> str:
    return f" ± {(max(values) - min(values)) / 2:.2f}" if len(values) > 1 else ""


def run_folder(workdir: Path, name: str, seed: int) -> Path:
    return workdir / (name if seed == 0 else f"{name}-seed{seed}")  # seed 0 keeps the earlier runs' names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)  # data and training budget, as benchmark_quality.py
    parser.set_defaults(workdir=Path("bench/fidelity"), heldout_images=6)
    parser.add_argument("--samples", type=int, default=8, help="K posterior samples (std, and today's MMSE)")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps of the posterior samples")
    parser.add_argument("--few-samples", type=int, default=4, help="K of the few-evaluation antithetic row")
    parser.add_argument("--few-steps", type=int, default=4, help="Euler steps of the few-evaluation antithetic row")
    parser.add_argument("--anchor-fractions", default="0.25,0.5", help="comma-separated --mean-anchor-fraction values")
    parser.add_argument("--datasets", default="committed,simulated")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds; the table averages over them")
    args = parser.parse_args()

    sets = {}
    if "committed" in args.datasets:
        committed = REPO / "tests" / "assets" / "sim"  # val/ is held out too: --validation-steps 0
        sets["committed"] = (committed, [committed / "val", committed / "test"])
    if "simulated" in args.datasets:
        data, heldout = prepare_data(args)
        sets["simulated"] = (data, [heldout])
    approaches = {"uniform t": []} | {
        f"{float(f):.0%} anchor": ["--mean-anchor-fraction", f] for f in args.anchor_fractions.split(",") if f
    }
    seeds = [int(s) for s in args.seeds.split(",")]
    header = (
        "| data | training | MMSE | MMSE NFE | std NFE | MMSE PSNR | MS-SSIM | MicroMS3IM | MicroMS3IM, shared bg | "
    )
    header += "sample PSNR | sample MicroMS3IM | sample FSIM | sample GMSD | slope | train s |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for set_name, (data, heldout) in sets.items():
        pairs, first = [pair for folder in heldout for pair in read_split(folder)], len(lines)
        workdir = args.workdir / set_name
        unet, seconds = [], []
        for seed in seeds:
            seconds.append(train(data, run_folder(workdir, "unet", seed), ["--objective", "mse"], args, seed))
            baseline = load_model(run_folder(workdir, "unet", seed))
            unet.append([image_row(predict_array(baseline, p.input, progress=False).mean, p.target) for p in pairs])
        every = sum(unet, [])
        lines.append(
            f"| {set_name} | U-Net | point | 1 | – | {mean_of(every, 'psnr')}{seed_spread(unet)} | "
            f"{mean_of(every, 'ms_ssim')} | {mean_of(every, 'micro_ms3im')} | {mean_of(every, 'micro_ms3im_shared')} | "
            "– | – | – | – | – | "
            f"{np.mean(seconds):.0f} |"
        )
        for approach, flags in approaches.items():
            per_way: dict[str, list[dict]] = {}
            seconds = []
            for seed in seeds:
                folder = run_folder(workdir, "cfm" if not flags else f"cfm-anchor-{flags[1]}", seed)
                seconds.append(train(data, folder, flags, args, seed))
                for way, row in mmse_rows(load_model(folder), pairs, args).items():
                    per_way.setdefault(way, []).append(row)
            for way, rows in per_way.items():
                slopes = [
                    fit_calibration(calibration_curve(np.concatenate(r["std"]), np.concatenate(r["error"])))[0]
                    for r in rows
                ]
                m, s = sum((r["mmse"] for r in rows), []), sum((r["sample"] for r in rows), [])
                lines.append(
                    f"| {set_name} | {approach} | {way} | {rows[0]['nfe']} | {rows[0]['std_nfe']} | "
                    f"{mean_of(m, 'psnr')}{seed_spread([r['mmse'] for r in rows])} | {mean_of(m, 'ms_ssim')} | "
                    f"{mean_of(m, 'micro_ms3im')} | {mean_of(m, 'micro_ms3im_shared')} | {mean_of(s, 'psnr')} | "
                    f"{mean_of(s, 'micro_ms3im')} | "
                    f"{mean_of(s, 'fsim')} | {mean_of(s, 'gmsd')} | {np.mean(slopes):.2f}{spread(slopes)} | "
                    f"{np.mean(seconds):.0f} |"
                )
        print("\n".join(lines[first:]), flush=True)
    print(
        f"\nbudget per model: {args.max_steps} steps x batch {args.batch_size} x {args.crop_size}^2 crops, "
        f"lr {args.lr}, one process; training seeds {args.seeds} (each number is the mean over the seeds; "
        "± is half the range of the seeds' values)\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

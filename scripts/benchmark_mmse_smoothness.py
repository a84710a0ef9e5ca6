"""Why MicroMS3IM can fall while the MMSE's PSNR rises (issue 25): the MMSE of the first k of K
samples, independent and antithetic, beside the anchor and a U-Net, on held-out pairs.

Prints, per MMSE: range-invariant PSNR; MicroMS3IM as ``hazematching evaluate`` computes it (each
image's own 3rd-percentile background); MicroMS3IM with the target's background for both images
(``benchmark_fidelity.micro_ms3im_target_background``); how far the MMSE's own background estimate
lies above the target's (as a fraction of the target's range, after the least-squares intensity
fit); and its mean gradient magnitude relative to the target's (1: as sharp as the target).

    python scripts/benchmark_mmse_smoothness.py --model bench/fidelity/simulated/cfm \\
        --data bench/fidelity/heldout --baseline bench/fidelity/simulated/unet
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from hazematching.data.io import read_split
from hazematching.evaluation import metrics
from hazematching.inference.predict import predict_array
from hazematching.run import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_fidelity import micro_ms3im_target_background  # noqa: E402  (one definition)


def fitted(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``image`` mapped onto the target's intensities by least squares."""
    design = np.stack([image.ravel(), np.ones(image.size)], axis=1)
    scale, offset = np.linalg.lstsq(design, target.ravel(), rcond=None)[0]
    return scale * image + offset


def measure(image: np.ndarray, target: np.ndarray) -> dict:
    from microssim.image_processing.background import get_background

    image, target = np.asarray(image, np.float64), np.asarray(target, np.float64)
    aligned, background = fitted(image, target), get_background(target)
    return {
        "psnr": metrics.range_invariant_psnr(image, target),
        "ms3im": metrics.micro_ms3im(image, target),
        "shared": micro_ms3im_target_background(image, target),
        "shift": (get_background(aligned) - background) / (target.max() - background),
        "gradient": np.hypot(*np.gradient(aligned)).mean() / np.hypot(*np.gradient(target)).mean(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a HazeMatching run")
    parser.add_argument("--data", type=Path, required=True, help="held-out pairs (images of >= 161 px a side)")
    parser.add_argument("--baseline", type=Path, help="a U-Net run (--objective mse) for its row")
    parser.add_argument("--samples", type=int, default=16, help="K; the rows take the first 1, 2, 4, ... of them")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps per sample")
    args = parser.parse_args()

    run = load_model(args.model)
    baseline = load_model(args.baseline) if args.baseline else None
    prefixes = sorted({2**i for i in range(args.samples.bit_length()) if 2**i <= args.samples} | {args.samples})
    rows: dict[tuple[str, int], list[dict]] = {}
    for pair in read_split(args.data):
        for noise in ("independent", "antithetic"):
            out = predict_array(
                run, pair.input, samples=args.samples, steps=args.steps, solver="euler", seed=0,
                keep_samples=True, sample_noise=noise, progress=False,
            )  # fmt: skip
            for k in prefixes:
                rows.setdefault((f"mean of {noise} samples", k), []).append(
                    measure(out.samples[:k].mean(0), pair.target)
                )
        anchor = predict_array(run, pair.input, samples=1, steps=1, mmse="anchor", seed=0, progress=False).mean
        rows.setdefault(("anchor v(0, 0, c)", 1), []).append(measure(anchor, pair.target))
        if baseline is not None:
            point = predict_array(baseline, pair.input, progress=False).mean
            rows.setdefault(("U-Net", 1), []).append(measure(point, pair.target))
    print("| MMSE | k | PSNR | MicroMS3IM | MicroMS3IM, target's background | background shift | gradient / target's |")
    print("|---|---|---|---|---|---|---|")
    for (name, k), values in rows.items():
        m = {key: np.mean([v[key] for v in values]) for key in values[0]}
        print(
            f"| {name} | {k} | {m['psnr']:.2f} | {m['ms3im']:.3f} | {m['shared']:.3f} | {m['shift']:+.4f} | "
            f"{m['gradient']:.2f} |"
        )


if __name__ == "__main__":
    main()

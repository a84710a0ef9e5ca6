"""Evaluation against confocal targets and uncertainty calibration of a trained run.

Both predict paired test/validation data with ``predict_array`` (the one prediction path) and
compare with the targets. Rows of the evaluation: the widefield input itself, the U-Net baseline
(optional), the HazeMatching MMSE and single HazeMatching samples (metrics averaged over samples).
"""

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import metrics
from .calibration import calibration_curve, fit_calibration, plot_calibration
from .data.io import read_split
from .predict import predict_array, resolve_device
from .run import CONFIG_NAME, LoadedRun, RunError, atomic_write_bytes, load_model

MS3IM_MIN_SIZE = 161  # microssim's 5-scale MS-SSIM needs more than 160 pixels per side
NOT_COMPUTED = {
    "lpips": "not computed: LPIPS needs pretrained backbone weights, which this version cannot load yet",
    "fid": "not computed: FID needs pretrained Inception weights, which this version cannot load yet",
    "fsim": "not computed: FSIM is not implemented yet",
}


def load_flow_run(model_dir, device: str = "auto") -> LoadedRun:
    run = load_model(model_dir, device=resolve_device(device))
    if run.objective != "cfm":
        raise RunError(
            f"{model_dir} is a U-Net baseline run (objective '{run.objective}'); this needs a HazeMatching run "
            "(pass the baseline with --baseline)"
        )
    return run


def image_metrics(prediction: np.ndarray, target: np.ndarray) -> dict:
    row = {
        "psnr": metrics.range_invariant_psnr(prediction, target),
        "ms_ssim": metrics.ms_ssim(prediction, target),
        "gmsd": metrics.gmsd(prediction, target),
    }
    if min(target.shape) >= MS3IM_MIN_SIZE:
        row["micro_ms3im"] = metrics.micro_ms3im(prediction, target)
    return row


def _mean_rows(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def save_figure(path: Path, panels: list[tuple[str, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = dict(panels)["target"]
    lo, hi = np.percentile(target, [1, 99.9])
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.4))
    for ax, (title, image) in zip(axes, panels):
        if title in ("input", "std"):
            vmin, vmax = np.percentile(image, [1, 99.9])
        else:
            vmin, vmax = lo, hi
        ax.imshow(image, cmap="magma", vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(
    model_dir: Path,
    data_dir: Path,
    output_dir: Path,
    baseline_dir: Path | None = None,
    metric_samples: int = 4,
    device: str = "auto",
    progress: bool = True,
    **predict_options,
) -> dict:
    """Metrics per image and their means; writes metrics.json, metrics.md and figures/NAME.png."""
    run = load_flow_run(model_dir, device)
    baseline = None
    if baseline_dir is not None:
        baseline = load_model(baseline_dir, device=resolve_device(device))
        if baseline.objective != "mse":
            raise RunError(f"--baseline {baseline_dir} is not a U-Net baseline run (train it with --objective mse)")
    pairs = read_split(data_dir)
    output_dir = Path(output_dir)
    (output_dir / "figures").mkdir(parents=True, exist_ok=True)
    per_image = {}
    for pair in tqdm(pairs, desc="evaluating", disable=not progress):
        pred = predict_array(run, pair.input, keep_samples=True, progress=False, **predict_options)
        rows = {"widefield input": image_metrics(pair.input, pair.target)}
        panels = [("input", pair.input), ("target", pair.target)]
        if baseline is not None:
            base = predict_array(baseline, pair.input, progress=False, tile_size=predict_options.get("tile_size", 256)).mean
            rows["U-Net baseline"] = image_metrics(base, pair.target)
            panels.append(("U-Net", base))
        rows["HazeMatching MMSE"] = image_metrics(pred.mean, pair.target)
        rows["HazeMatching sample"] = _mean_rows([image_metrics(s, pair.target) for s in pred.samples[:metric_samples]])
        per_image[pair.name] = rows
        panels += [("MMSE", pred.mean), ("sample 1", pred.samples[0])]
        if len(pred.samples) > 1:
            panels.append(("sample 2", pred.samples[1]))
        panels.append(("std", pred.std))
        save_figure(output_dir / "figures" / f"{pair.name}.png", panels)
    methods = list(next(iter(per_image.values())).keys())
    mean = {m: _mean_rows([per_image[name][m] for name in per_image]) for m in methods}
    result = {
        "model": str(model_dir),
        "baseline": str(baseline_dir) if baseline_dir else None,
        "data": str(data_dir),
        "images": len(pairs),
        "settings": {k: v for k, v in predict_options.items()},
        "mean": mean,
        "per_image": per_image,
        "not_computed": NOT_COMPUTED,
    }
    atomic_write_bytes(output_dir / "metrics.json", json.dumps(result, indent=2).encode())
    atomic_write_bytes(output_dir / "metrics.md", markdown_table(mean).encode())
    return result


def markdown_table(mean: dict) -> str:
    columns = [("psnr", "PSNR (dB) ↑"), ("ms_ssim", "MS-SSIM ↑"), ("micro_ms3im", "MicroMS3IM ↑"), ("gmsd", "GMSD ↓")]
    present = [(k, title) for k, title in columns if any(k in row for row in mean.values())]
    lines = ["| method | " + " | ".join(t for _, t in present) + " |", "|---" * (len(present) + 1) + "|"]
    for method, row in mean.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[k]:.4f}" if k in row else "–" for k, _ in present) + " |")
    return "\n".join(lines) + "\n"


def _errors_and_stds(run: LoadedRun, directory: Path, progress: bool, **predict_options) -> tuple[np.ndarray, np.ndarray]:
    stds, errors = [], []
    for pair in tqdm(read_split(directory), desc=f"predicting {Path(directory).name}", disable=not progress):
        pred = predict_array(run, pair.input, progress=False, **predict_options)
        stds.append(pred.std.ravel())
        errors.append((pred.mean - pair.target).ravel())
    return np.concatenate(stds), np.concatenate(errors)


def calibrate(
    model_dir: Path,
    data_dir: Path,
    eval_dir: Path | None = None,
    bins: int = 15,
    device: str = "auto",
    progress: bool = True,
    **predict_options,
) -> dict:
    """Fit (a, b) on ``data_dir``, store them in the run's config.json and plot both curves on
    ``eval_dir`` (a held-out split; defaults to DATA/../test when it exists)."""
    model_dir = Path(model_dir)
    run = load_flow_run(model_dir, device)
    std, error = _errors_and_stds(run, data_dir, progress, **predict_options)
    scale, offset = fit_calibration(calibration_curve(std, error, bins))
    if eval_dir is None and (Path(data_dir).parent / "test").is_dir():
        eval_dir = Path(data_dir).parent / "test"
    held_out = eval_dir is not None
    if held_out:
        std, error = _errors_and_stds(run, eval_dir, progress, **predict_options)
    before = calibration_curve(std, error, bins)
    after = calibration_curve(scale * std + offset, error, bins)
    title = f"{'held-out ' + Path(eval_dir).name if held_out else 'fitting data (no held-out split given)'}"
    plot_calibration(before, after, scale, offset, model_dir / "calibration.png", title)
    result = {
        "scale": scale,
        "offset": offset,
        "bins": bins,
        "fit_data": str(data_dir),
        "plot_data": str(eval_dir) if held_out else str(data_dir),
        "settings": {k: v for k, v in predict_options.items()},
        "mean_abs_deviation_before": float(np.mean(np.abs(before.rmse - before.rmv))),
        "mean_abs_deviation_after": float(np.mean(np.abs(after.rmse - after.rmv))),
    }
    config = dict(run.config, calibration=result)
    atomic_write_bytes(model_dir / CONFIG_NAME, json.dumps(config, indent=2).encode())
    return result

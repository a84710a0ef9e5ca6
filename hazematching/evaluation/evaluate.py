"""Evaluation against confocal targets and uncertainty calibration of a trained run.

Both predict paired test/validation data with ``predict_array`` (the one prediction path) and
compare with the targets. Rows of the evaluation: the widefield input itself, the U-Net baseline
(optional), the HazeMatching MMSE and single HazeMatching samples (metrics averaged over samples).
"""

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hazematching.data.io import read_split
from hazematching.evaluation import metrics
from hazematching.evaluation.calibration import calibration_curve, fit_calibration, plot_calibration
from hazematching.evaluation.perceptual import FID, LPIPS, patches
from hazematching.inference.predict import predict_array, resolve_device
from hazematching.run import (
    CALIBRATION_BINS,
    Calibration,
    LoadedRun,
    RunError,
    atomic_write_bytes,
    load_model,
    write_description,
)
from hazematching.settings import InferenceSettings, SettingError, resolve_options, speed_of


def load_flow_run(model_dir, device: str = "auto") -> LoadedRun:
    run = load_model(model_dir, device=resolve_device(device))
    if run.objective != "cfm":
        raise RunError(
            f"{model_dir} is a U-Net baseline run (objective '{run.objective}'); this needs a HazeMatching run "
            "(pass the baseline with --baseline)"
        )
    return run


def image_metrics(
    prediction: np.ndarray, target: np.ndarray, lpips: LPIPS | None = None, with_ms3im: bool = True
) -> dict:
    row = {
        "psnr": metrics.range_invariant_psnr(prediction, target),
        "ms_ssim": metrics.ms_ssim(prediction, target),
        "gmsd": metrics.gmsd(prediction, target),
        "fsim": metrics.fsim(prediction, target),
    }
    if with_ms3im:
        row["micro_ms3im"] = metrics.micro_ms3im(prediction, target)
    if lpips is not None:
        lo, hi = float(target.min()), float(target.max())
        row["lpips"] = float(lpips(patches(prediction, lo, hi), patches(target, lo, hi)).mean())
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
    lpips_backbone: Path | None = None,
    lpips_linear: Path | None = None,
    fid_backbone: Path | None = None,
    **predict_options,
) -> dict:
    """Metrics per image and their means; writes metrics.json, metrics.md and figures/NAME.png.

    The sample row averages the metrics of ``metric_samples`` single samples; FID is computed over
    the 64 x 64 patches of all images of a row against the target patches.
    """
    if (lpips_backbone is None) != (lpips_linear is None):
        raise RunError("LPIPS needs both --lpips-backbone and --lpips-linear")
    lpips = LPIPS(lpips_backbone, lpips_linear) if lpips_backbone else None
    fid = FID(fid_backbone) if fid_backbone else None
    run = load_flow_run(model_dir, device)
    settings = resolve_options(run.config, predict_options)  # once; invalid values refused before any work
    baseline = None
    if baseline_dir is not None:
        baseline = load_model(baseline_dir, device=resolve_device(device))
        if baseline.objective != "mse":
            raise RunError(f"--baseline {baseline_dir} is not a U-Net baseline run (train it with --objective mse)")
    pairs = read_split(data_dir)
    ms3im_problem = metrics.micro_ms3im_problem([p.target.shape for p in pairs], [p.name for p in pairs])
    output_dir = Path(output_dir)
    (output_dir / "figures").mkdir(parents=True, exist_ok=True)
    per_image, fid_patches = {}, {}
    for pair in tqdm(pairs, desc="evaluating", disable=not progress):
        pred = predict_array(
            run,
            pair.input,
            keep_samples=True,
            progress=False,
            job_planes=len(pairs),
            settings=settings,
            **speed_of(predict_options),
        )
        candidates = {"widefield input": [pair.input]}
        if baseline is not None:
            tile = predict_options.get("tile_size")
            candidates["U-Net baseline"] = [predict_array(baseline, pair.input, progress=False, tile_size=tile).mean]
        candidates["HazeMatching MMSE"] = [pred.mean]
        candidates["HazeMatching sample"] = list(pred.samples[:metric_samples])
        per_image[pair.name] = {
            row: _mean_rows([image_metrics(image, pair.target, lpips, ms3im_problem is None) for image in images])
            for row, images in candidates.items()
        }
        if fid is not None:
            lo, hi = float(pair.target.min()), float(pair.target.max())
            fid_patches.setdefault("target", []).append(patches(pair.target, lo, hi))
            for row, images in candidates.items():
                fid_patches.setdefault(row, []).extend(patches(image, lo, hi) for image in images)
        panels = [("input", pair.input), ("target", pair.target)]
        if baseline is not None:
            panels.append(("U-Net", candidates["U-Net baseline"][0]))
        panels += (
            [("MMSE", pred.mean)]
            + [(f"sample {i + 1}", s) for i, s in enumerate(pred.samples[:2])]
            + [("std", pred.std)]
        )
        save_figure(output_dir / "figures" / f"{pair.name}.png", panels)
    methods = list(next(iter(per_image.values())).keys())
    mean = {m: _mean_rows([per_image[name][m] for name in per_image]) for m in methods}
    if fid is not None:
        for m in methods:
            mean[m]["fid"] = fid(fid_patches["target"], fid_patches[m])
    not_computed = {"micro_ms3im": ms3im_problem} if ms3im_problem else {}
    if lpips is None:
        not_computed["lpips"] = (
            "not computed: pass --lpips-backbone and --lpips-linear (local TorchScript + safetensors files)"
        )
    if fid is None:
        not_computed["fid"] = "not computed: pass --fid-backbone (a local TorchScript feature extractor)"
    result = {
        "model": str(model_dir),
        "baseline": str(baseline_dir) if baseline_dir else None,
        "data": str(data_dir),
        "images": len(pairs),
        "settings": {**predict_options, **settings.model_dump()},
        "mean": mean,
        "per_image": per_image,
        "not_computed": not_computed,
    }
    atomic_write_bytes(output_dir / "metrics.json", json.dumps(result, indent=2).encode())
    atomic_write_bytes(output_dir / "metrics.md", markdown_table(mean, not_computed).encode())
    return result


def markdown_table(mean: dict, not_computed: dict | None = None) -> str:
    """The mean metrics per method, then one line per metric left out and why."""
    columns = [
        ("psnr", "PSNR (dB) ↑"),
        ("ms_ssim", "MS-SSIM ↑"),
        ("micro_ms3im", "MicroMS3IM ↑"),
        ("fsim", "FSIM ↑"),
        ("gmsd", "GMSD ↓"),
        ("lpips", "LPIPS ↓"),
        ("fid", "FID ↓"),
    ]
    present = [(k, title) for k, title in columns if any(k in row for row in mean.values())]
    lines = ["| method | " + " | ".join(t for _, t in present) + " |", "|---" * (len(present) + 1) + "|"]
    for method, row in mean.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[k]:.4f}" if k in row else "–" for k, _ in present) + " |")
    lines += [f"\n{name}: {reason}" for name, reason in (not_computed or {}).items()]
    return "\n".join(lines) + "\n"


def _errors_and_stds(
    run: LoadedRun, directory: Path, progress: bool, settings: InferenceSettings, **speed
) -> tuple[np.ndarray, np.ndarray]:
    stds, errors = [], []
    pairs = read_split(directory)
    for pair in tqdm(pairs, desc=f"predicting {Path(directory).name}", disable=not progress):
        pred = predict_array(run, pair.input, progress=False, job_planes=len(pairs), settings=settings, **speed)
        stds.append(pred.std.ravel())
        errors.append((pred.mean - pair.target).ravel())
    return np.concatenate(stds), np.concatenate(errors)


def calibrate(
    model_dir: Path,
    data_dir: Path,
    eval_dir: Path | None = None,
    bins: int = CALIBRATION_BINS,
    device: str = "auto",
    progress: bool = True,
    **predict_options,
) -> dict:
    """Fit (a, b) on ``data_dir``, store them in the run's config.json and plot both curves on
    ``eval_dir`` (a held-out split; defaults to DATA/../test when it exists)."""
    model_dir = Path(model_dir)
    run = load_flow_run(model_dir, device)
    settings = resolve_options(run.config, predict_options)  # once; invalid values refused before any work
    if settings.samples < 2:
        raise SettingError(f"--samples {settings.samples}: calibration needs K >= 2 (the std of one sample is 0)")
    std, error = _errors_and_stds(run, data_dir, progress, settings, **speed_of(predict_options))
    scale, offset = fit_calibration(calibration_curve(std, error, bins))
    if eval_dir is None and (Path(data_dir).parent / "test").is_dir():
        eval_dir = Path(data_dir).parent / "test"
    held_out = eval_dir is not None
    if held_out:
        std, error = _errors_and_stds(run, eval_dir, progress, settings, **speed_of(predict_options))
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
        "settings": {**predict_options, **settings.model_dump()},
        "mean_abs_deviation_before": float(np.mean(np.abs(before.rmse - before.rmv))),
        "mean_abs_deviation_after": float(np.mean(np.abs(after.rmse - after.rmv))),
    }
    write_description(model_dir, run.config.model_copy(update={"calibration": Calibration(**result)}))
    return result

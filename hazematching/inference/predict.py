"""Posterior prediction of one 2D image: tiled, batched, memory bounded by tile and batch size.

``predict_array`` is the one place where an image meets the sampler; files, stacks, folders and
several processes are handled by ``experiment.predict_experiment`` plane by plane. The same function
serves the U-Net baseline run, which gives a single deterministic prediction.

``python -m hazematching predict`` is ``hazematching predict``, so that it can be started by
``accelerate launch -m hazematching predict ...`` on several processes, GPUs and nodes.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from hazematching.core import evaluations_per_step, sample_posterior
from hazematching.core.tiles import OVERLAP, fit_multiple, window
from hazematching.data.io import DataError
from hazematching.inference.input_range import InputRangeWarning, out_of_range
from hazematching.inference.speed import (
    default_samples_per_call,
    default_tiles_per_call,
    fast_network,
    images_per_call,
)
from hazematching.inference.tiling import tiles
from hazematching.run import LoadedRun, RunError
from hazematching.settings import InferenceSettings, refuse_point_predictor_outputs, resolve_settings

MIN_SIZE = 16


@dataclass
class Prediction:
    mean: np.ndarray  # (H, W), target intensity units
    std: np.ndarray | None  # (H, W); calibrated if requested; None for the point predictor
    samples: np.ndarray | None  # (K, H, W) when requested


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA GPU is available")
    return torch.device(device)


class TileSizeWarning(UserWarning):
    """A network with attention over its whole window is tiled at another size than it was trained at."""


class TileSeamWarning(UserWarning):
    """Tiles overlap by less than the network's receptive radius: a tiled image can differ from the whole."""


def seam_problem(run: LoadedRun, tile_size: int, overlap: int) -> str | None:
    """One line when tiles of ``tile_size`` overlapping by ``overlap`` px (as requested; ``window``
    caps the overlap at half a tile) give a pixel less context than the network's receptive radius,
    naming every change that fixes it; None when they do not. Predict and export both ask."""
    stride = getattr(run.model, "stride", 1)
    tile, kept = window(tile_size, overlap, stride)
    if kept >= OVERLAP or getattr(run.model, "fixed_window", False):
        return None  # the default overlap covers the default networks; a fixed window cross-fades instead
    radius = run.receptive_radius()
    if radius is None or kept >= radius:
        return None
    fixes = [f"--tile-size {-(-2 * radius // stride) * stride}"] if tile // 2 < radius else []
    fixes += [f"--overlap {radius}"] if overlap < radius else []
    return (
        f"tiles of {tile} px overlapping by {kept} px{' (at most half a tile)' if kept < overlap else ''}: less "
        f"than the network's receptive radius ({radius} px), so tiles see less context than the whole image and "
        f"can show seams; use {' '.join(fixes)} or more"
    )


class CalibrationWarning(UserWarning):
    """The std calibration is applied to predictions made with other K, N or solver than it was fitted with."""


class SingleSampleWarning(UserWarning):
    """K = 1: the std of one posterior sample is 0 everywhere."""


SETTINGS_WARNINGS = (CalibrationWarning, TileSizeWarning, TileSeamWarning, SingleSampleWarning)


def settings_warnings(
    run: LoadedRun, settings: InferenceSettings, calibrated: bool, tiled: bool
) -> list[tuple[str, type[Warning]]]:
    """(message, category) of every warning that depends on the settings, not on the image: predict
    gives them per call, an experiment once per job, export for its package. ``tiled``: the image is
    larger than a tile."""
    found = []
    if (
        calibrated
        and run.config.calibration
        and (problem := run.config.calibration.mismatch(settings, str(run.path or "RUN")))
    ):
        found.append((problem, CalibrationWarning))
    trained = run.config.sampler.tile_size
    tile_size = window(settings.tile_size, settings.overlap, getattr(run.model, "stride", 1))[0]
    if getattr(run.model, "fixed_window", False) and trained and tile_size != trained:
        found.append(
            (
                f"--tile-size {settings.tile_size}: this network attends over its whole window and was trained on "
                f"{trained} px windows; tiles of another size change its output (leave --tile-size out)",
                TileSizeWarning,
            )
        )
    if tiled and (problem := seam_problem(run, settings.tile_size, settings.overlap)):
        found.append((problem, TileSeamWarning))
    if run.objective == "cfm" and settings.samples == 1:
        found.append(
            (
                "--samples 1: the std of one posterior sample is 0 everywhere, no uncertainty; use --samples 2 "
                "or more for one",
                SingleSampleWarning,
            )
        )
    return found


def calibration(run: LoadedRun) -> tuple[float, float]:
    """(scale a, offset b) from ``hazematching calibrate``; the calibrated std is a * std + b."""
    cal = run.config.calibration
    if cal is None:
        raise RunError("this run is not calibrated: run `hazematching calibrate --model RUN --data VAL_DIR` first")
    return cal.scale, cal.offset


def pad_to_stride(image: np.ndarray, stride: int) -> np.ndarray:
    """The one border rule for every window the network sees: the image (not each window) is padded
    by repeating its last row/column to a multiple of the network's stride, as the network would pad
    a window of that size; so one whole-image window and many tiles see the same border, and the
    exported model (``core/dehazer.py``) does the same."""
    pad_h, pad_w = (-image.shape[0]) % stride, (-image.shape[1]) % stride
    return np.pad(image, ((0, pad_h), (0, pad_w)), mode="edge") if pad_h or pad_w else image


def deprecated_name(old: str, old_value, new: str, new_value):
    """The value given under a keyword's old name, with a ``FutureWarning`` (kept for one release)."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ValueError(f"{old} is the old name of {new}: give only {new}")
    warnings.warn(f"{old} is deprecated: use {new}", FutureWarning, stacklevel=4)  # the caller, past inference_mode
    return old_value


@torch.inference_mode()
def predict_array(
    run: LoadedRun,
    image: np.ndarray,
    samples: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    tiles_per_call: int | None = None,
    keep_samples: bool = False,
    calibrated: bool = False,
    progress: bool = True,
    solver: str | None = None,
    compile: str = "auto",
    precision: str = "auto",
    samples_per_call: int | None = None,
    job_planes: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
    mmse: str | None = None,
    sample_noise: str | None = None,
    settings: InferenceSettings | None = None,
    batch_size: int | None = None,
    sample_batch: int | None = None,
) -> Prediction:
    """Dehaze one 2D image (raw intensities). ``settings``: the resolved sampler and tiling settings
    (``settings.resolve_settings``, done once by a caller that predicts many images); without it, the
    separate values are resolved here (those not given: the run's stored defaults, then the package's).

    ``compile``/``precision`` (see ``speed.fast_network``), ``tiles_per_call`` and ``samples_per_call``
    (per network call, default by device) change speed, not results beyond floating-point rounding.
    ``job_planes``: how many images of this size the caller will predict, so that ``compile="auto"``
    judges the job. ``on_progress(done, total)`` is called as samples of tile batches finish (an
    exception it raises, e.g. a user's cancel, stops the prediction there). ``batch_size`` and
    ``sample_batch``: the old names of ``tiles_per_call`` and ``samples_per_call`` (deprecated)."""
    tiles_per_call = deprecated_name("batch_size", batch_size, "tiles_per_call", tiles_per_call)
    samples_per_call = deprecated_name("sample_batch", sample_batch, "samples_per_call", samples_per_call)
    if image.ndim != 2 or min(image.shape) < MIN_SIZE:
        raise DataError(f"image of shape {image.shape}: expected a 2D image of at least {MIN_SIZE} x {MIN_SIZE}")
    if not np.isfinite(image).all():
        raise DataError("image contains NaN/Inf pixels")
    if problem := out_of_range(run.normalization, image):
        warnings.warn(f"image: {problem}", InputRangeWarning, stacklevel=2)
    point_predictor = run.objective == "mse"
    refuse_point_predictor_outputs(
        run.objective, keep_samples, calibrated, samples=samples, steps=steps, solver=solver, seed=seed, mmse=mmse,
        sample_noise=sample_noise, samples_per_call=samples_per_call,
    )  # fmt: skip
    cal = calibration(run) if calibrated else None
    separate = (samples, steps, seed, solver, tile_size, overlap, mmse, sample_noise)
    if settings is None:
        settings = resolve_settings(run.config, *separate)
    elif any(value is not None for value in separate):
        raise ValueError("predict_array: give the resolved settings or the separate values, not both")
    samples, steps, seed, solver = settings.samples, settings.steps, settings.seed, settings.solver
    mmse = settings.mmse
    per_step = evaluations_per_step(solver)
    stride = getattr(run.model, "stride", 1)
    tile_size, overlap = window(settings.tile_size, settings.overlap, stride)
    for message, category in settings_warnings(run, settings, cal is not None, max(image.shape) > tile_size):
        warnings.warn(message, category, stacklevel=2)

    device = next(run.model.parameters()).device
    tiles_per_call = tiles_per_call or default_tiles_per_call(device)
    norm = run.normalization
    height, width = image.shape
    normalized = pad_to_stride(norm.normalize_input(image).astype(np.float32), stride)
    padded_height, padded_width = normalized.shape
    all_tiles, th, tw = tiles(padded_height, padded_width, tile_size, overlap, fit_multiple(run.model, stride))
    # fixed-window networks cross-fade overlapping tiles (core.tiles.ramp); the others keep regions
    canvas = (padded_height, padded_width)
    blend = np.zeros(canvas, np.float32) if getattr(run.model, "fixed_window", False) else None
    mean = np.zeros(canvas, np.float32)
    std = None if point_predictor else np.zeros(canvas, np.float32)
    kept = np.zeros((samples, *canvas), np.float32) if keep_samples else None
    batches = [all_tiles[i : i + tiles_per_call] for i in range(0, len(all_tiles), tiles_per_call)]
    total = len(batches) * (1 if point_predictor else samples)
    evaluations = (
        len(batches) * (1 if point_predictor else samples * steps * per_step + (mmse == "anchor")) * job_planes
    )
    key = (device.type, compile, precision)
    net = run.fast.get(key) or fast_network(run.model, device, compile, precision, evaluations)
    if net.compiled is not None or compile == "off":  # an uncompiled "auto" may compile for a bigger job
        run.fast[key] = net
    per_call = samples_per_call or default_samples_per_call(
        device, samples, min(tiles_per_call, len(all_tiles)), images_per_call(device)
    )
    full = len(batches[0])
    unit = "batch" if point_predictor else "sample"  # a U-Net draws no samples: one pass per batch of tiles
    with tqdm(total=total, desc="predicting", unit=unit, disable=not progress, leave=False) as bar:
        done = [0]  # a disabled tqdm does not count

        def advance(count: int = 1) -> None:
            bar.update(count)
            done[0] += count
            if on_progress is not None:
                on_progress(done[0], total)

        for batch in batches:
            windows = [normalized[t.window(th, tw)] for t in batch]
            if net.compiled is not None:  # one shape for every call: a smaller last batch would recompile
                windows += windows[-1:] * (full - len(batch))
            cond = torch.from_numpy(np.stack(windows)[:, None]).to(device)
            if point_predictor:
                out_mean, out_std, out_samples = net(torch.zeros_like(cond), cond, None), None, None
                advance()
            else:
                # noise frame centred on the image, as in the exported model (core/dehazer.py)
                padded = batch + batch[-1:] * (len(windows) - len(batch))
                origin_y = torch.tensor([t.y.start - height // 2 for t in padded])
                origin_x = torch.tensor([t.x.start - width // 2 for t in padded])
                post = sample_posterior(
                    net,
                    cond,
                    samples,
                    steps,
                    seed,
                    keep_samples=keep_samples,
                    origin_y=origin_y,
                    origin_x=origin_x,
                    on_sample=advance,
                    solver=solver,
                    samples_per_call=per_call,
                    mmse=mmse,
                    sample_noise=settings.sample_noise,
                )
                out_mean, out_std, out_samples = post.mean, post.std, post.samples
            out_mean = out_mean.float().cpu().numpy()
            for i, t in enumerate(batch):
                if blend is not None:
                    w = t.blend_weights(th, tw, padded_height, padded_width, overlap)
                    area = t.window(th, tw)
                    blend[area] += w
                    mean[area] += w * out_mean[i, 0]
                    if out_std is not None:
                        std[area] += w * out_std[i, 0].float().cpu().numpy()
                    if out_samples is not None:
                        kept[(slice(None), *area)] += w * out_samples[i, :, 0].float().cpu().numpy()
                    continue
                mean[t.kept()] = out_mean[i, 0][t.kept_in_tile()]
                if out_std is not None:
                    std[t.kept()] = out_std[i, 0].cpu().numpy()[t.kept_in_tile()]
                if out_samples is not None:
                    kept[(slice(None), *t.kept())] = (
                        out_samples[i, :, 0].cpu().numpy()[(slice(None), *t.kept_in_tile())]
                    )
    if blend is not None:
        mean /= blend
        std = std / blend if std is not None else None
        kept = kept / blend if kept is not None else None
    mean = mean[:height, :width]
    std = std[:height, :width] if std is not None else None
    kept = kept[:, :height, :width] if kept is not None else None
    mean = norm.denormalize_target(mean).astype(np.float32)
    if std is not None:
        std *= np.float32(norm.target_std)
        if cal is not None:
            std = np.maximum(cal[0] * std + cal[1], 0).astype(np.float32)  # b < 0: never a negative std
    if kept is not None:
        kept = norm.denormalize_target(kept).astype(np.float32)
    return Prediction(mean, std, kept)

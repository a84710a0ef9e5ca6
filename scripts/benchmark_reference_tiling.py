"""An imported paper network (P = 128) under the paper's keep-the-centre tiling and under this
project's default tiling, side by side in one run with the same weights and the same sampler.

The run is a ``ReferenceUNet`` with the P = 128 configuration whose weights are perturbed with small
random noise (so the zero-initialised output layers are active), or ``--checkpoint`` a released
``best_model.pth``; either is written as a run by ``import_checkpoint`` into a temporary folder, so
it holds the importer's sampler settings (Euler, 19 steps on the 20-point grid, tile P, overlap P/4).

(a) the reference scheme (the authors' ``extract_patches_inner``/``reconstruct_image_inner``,
    re-implemented here): P x P windows placed every P/2 pixels, of which only the central
    (P/2) x (P/2) is kept and stitched, so every pixel costs about 4 window evaluations. Borders
    (``--border``): ``reflect`` (default) reflect-pads the image by P/4 on every side, so border pixels
    also come from window centres; ``clamp`` is what the authors' code does (reflect-pad the bottom
    and right to a multiple of P, and shift border windows inside the image, keeping an off-centre
    region). Samples come from ``sample_posterior`` (Euler, the run's 19 steps) with the hash noise
    keyed on the pixel position in the same frame as (b), so both schemes start every pixel from
    the same noise and differ only in the context each pixel's window sees; ``--tile-noise`` gives
    every window its own noise instead (as the authors' fresh ``torch.randn`` per patch).
(b) this project's default: ``predict_array(run, image, samples=K)`` with the run's stored settings
    (tiles of exactly P overlapping by P/4, each keeping the half of the overlap nearer its centre;
    border tiles end at the border, nothing is padded), about 1.9 window evaluations per pixel.

Measured on a smooth synthetic image (gaussian-filtered random blobs scaled to the run's input mean
and std), after one warm-up pass of each scheme with one step (``--repeats``: alternating timed
runs, the fastest of each counts):

* seconds per SIZE^2 image at K samples (``--size``, ``--samples``), the time per network evaluation
  (window x sample x step) and, from it, the EXTRAPOLATED seconds per 1024^2 image at K = 8 from the
  number of evaluations each scheme needs there (the reference scheme at 1024^2, K = 8 takes hours
  on two CPU cores); the ratio of the times (a) / (b), wall-clock and CPU time of this process
  (on a machine shared with other jobs the CPU time is the steadier of the two);
* the difference of the two MMSEs: RMS difference relative to the spatial std of (a)'s MMSE, and
  PSNR of (b) against (a) (peak = the range of (a)), over the whole image and without a P/2 border;
* a seam measure: at every internal boundary between kept regions (vertical and horizontal) the
  mean |column a - column b| (|row a - row b|) across it, divided by the mean of the same over all
  adjacent column (row) pairs; 1 means no seam. The table gives the max and mean over a scheme's own
  boundaries and, as a control, the max at the other scheme's boundaries (where this one has none).

    python scripts/benchmark_reference_tiling.py --size 256 --samples 2      # ~3 min on 2 CPU cores
    python scripts/benchmark_reference_tiling.py --device cpu cuda           # 1024^2, K = 8 on both
    python scripts/benchmark_reference_tiling.py --checkpoint best_model.pth --dataset organoids1
"""

import argparse
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from hazematching.architecture import ReferenceArchitecture
from hazematching.core import sample_posterior
from hazematching.core.tiles import fit_multiple, window
from hazematching.inference.predict import predict_array
from hazematching.inference.speed import (
    default_samples_per_call,
    default_tiles_per_call,
    fast_network,
    images_per_call,
)
from hazematching.inference.tiling import tiles
from hazematching.paper.download import sha256_of
from hazematching.paper.importer import import_checkpoint
from hazematching.paper.releases import by_sha256, get
from hazematching.run import load_model
from hazematching.settings import resolve_settings

PATCH = 128  # the training crop of four of the five releases
EXTRAPOLATE_SIZE = 1024
EXTRAPOLATE_SAMPLES = 8
DEFAULT_STATS = "organoids1"  # input/target statistics of the synthetic run (a P = 128 release)


@dataclass(frozen=True)
class Window1D:
    start: int  # window covers [start, start + P) of the padded axis
    keep_start: int  # and contributes [keep_start, keep_end) of the image axis
    keep_end: int
    offset: int  # where keep_start lies in the window


def reference_spans(length: int, patch: int, border: str) -> tuple[int, int, list[Window1D]]:
    """(pad before, pad after, windows) of one axis in the keep-the-centre scheme: windows of
    ``patch`` every ``patch // 2`` pixels, each keeping a ``patch // 2`` region."""
    crop = patch // 2
    if border == "reflect":  # every kept region is a window's centre, border ones too
        margin = (patch - crop) // 2
        count = math.ceil(length / crop)
        before, after = margin, count * crop + margin - length
        spans = [Window1D(k * crop, k * crop, min((k + 1) * crop, length), margin) for k in range(count)]
        return before, after, spans
    # clamp: pad the end to a multiple of patch, shift border windows inside (an off-centre region)
    after = (-length) % patch
    padded = length + after
    margin = (patch - crop) // 2
    spans = []
    for pos in range(0, padded - crop + 1, crop):
        start = min(max(pos - margin, 0), padded - patch)
        if pos < length:
            spans.append(Window1D(start, pos, min(pos + crop, length), pos - start))
    return 0, after, spans


@torch.inference_mode()  # as predict_array
def reference_predict(net, normalized, patch, border, samples, steps, seed, solver, device, tile_noise):
    """MMSE of the keep-the-centre scheme on a normalised image (normalised target units) and the
    number of windows."""
    height, width = normalized.shape
    by, ay, ys = reference_spans(height, patch, border)
    bx, ax, xs = reference_spans(width, patch, border)
    if max(by, ay) >= height or max(bx, ax) >= width:
        raise SystemExit(f"image {height}x{width} too small to reflect-pad for {patch}^2 windows")
    padded = np.pad(normalized, ((by, ay), (bx, ax)), mode="reflect")
    windows = [(y, x) for y in ys for x in xs]
    batch_size = default_tiles_per_call(device)
    per_call = default_samples_per_call(device, samples, min(batch_size, len(windows)), images_per_call(device))
    mean = np.zeros((height, width), np.float32)
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        crops = [padded[y.start : y.start + patch, x.start : x.start + patch] for y, x in batch]
        cond = torch.from_numpy(np.stack(crops)[:, None]).to(device)
        if tile_noise:  # rows far from the image and from each other: independent noise per window
            origin_y = torch.tensor([10**6 + 2 * patch * (first + i) for i in range(len(batch))])
            origin_x = torch.zeros(len(batch), dtype=torch.int64)
        else:  # the frame of predict_array: image coordinates relative to the image centre
            origin_y = torch.tensor([y.start - by - height // 2 for y, _ in batch])
            origin_x = torch.tensor([x.start - bx - width // 2 for _, x in batch])
        post = sample_posterior(
            net,
            cond,
            samples,
            steps,
            seed,
            origin_y=origin_y,
            origin_x=origin_x,
            solver=solver,
            samples_per_call=per_call,
        )
        out = post.mean.float().cpu().numpy()
        for i, (y, x) in enumerate(batch):
            mean[y.keep_start : y.keep_end, x.keep_start : x.keep_end] = out[
                i, 0, y.offset : y.offset + y.keep_end - y.keep_start, x.offset : x.offset + x.keep_end - x.keep_start
            ]
    return mean, len(windows)


def reference_windows(length: int, patch: int, border: str) -> tuple[int, list[int]]:
    """(windows per axis, internal boundaries between kept regions) of the reference scheme."""
    spans = reference_spans(length, patch, border)[2]
    return len(spans), [s.keep_start for s in spans[1:]]


def default_windows(run, length: int) -> tuple[int, list[int], int, int]:
    """(tiles, internal boundaries of one axis, tile, overlap) of predict_array's tiling of a
    length x length image with the run's stored settings."""
    settings = resolve_settings(run.config)
    stride = getattr(run.model, "stride", 1)
    tile, overlap = window(settings.tile_size, settings.overlap, stride)
    all_tiles = tiles(length, length, tile, overlap, fit_multiple(run.model, stride))[0]
    cuts = sorted({t.x.keep_start for t in all_tiles} - {0})
    return len(all_tiles), cuts, tile, overlap


def seam_ratios(image: np.ndarray, cuts: list[int]) -> list[float]:
    """Mean |difference| across each boundary (vertical: columns c-1|c, horizontal: rows c-1|c)
    over the mean of the same across all adjacent columns (rows)."""
    dx, dy = np.abs(np.diff(image, axis=1)), np.abs(np.diff(image, axis=0))
    ratios = [float(dx[:, c - 1].mean() / dx.mean()) for c in cuts]
    return ratios + [float(dy[c - 1].mean() / dy.mean()) for c in cuts]


def synthetic_image(size: int, mean: float, std: float, seed: int = 0) -> np.ndarray:
    """Smooth blobs: gaussian-filtered uniform noise (sigma 6 px) plus a few wide gaussian spots,
    standardised to the given mean and std."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.random((size, size)), 6.0)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(max(4, size * size // 4096)):
        cy, cx, sigma = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(4, 16)
        field += 0.02 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    field = (field - field.mean()) / field.std()
    return (mean + std * field).astype(np.float32)


def make_run(args, folder: Path):
    """Import the given checkpoint, or a perturbed fresh P = 128 network, as a run in ``folder``."""
    stats = get(DEFAULT_STATS).normalisation["all"]
    if args.checkpoint is not None:
        release = by_sha256(sha256_of(args.checkpoint))
        known = release is not None or args.dataset is not None
        name = (release or get(args.dataset)).name if known else None
        return import_checkpoint(
            args.checkpoint,
            folder / "run",
            dataset=args.dataset,
            source_channel="ch0" if name == "zebrafish" else None,
            normalization=None if known else stats,
            patch_size=None if known else PATCH,
        )
    torch.manual_seed(0)
    net = ReferenceArchitecture(channel_mults=(1, 1, 2, 3, 4), attention_resolutions=(8,)).build()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(args.perturb * torch.randn_like(p))
    path = folder / "best_model.pth"
    torch.save(net.state_dict(), path)
    return import_checkpoint(path, folder / "run", normalization=stats, patch_size=PATCH)


def measure(args, run_dir: Path, device: torch.device) -> dict:
    run = load_model(run_dir, device)
    settings = resolve_settings(run.config)
    norm = run.normalization
    patch = settings.tile_size
    image = synthetic_image(args.size, norm.input_mean, norm.input_std)
    normalized = norm.normalize_input(image).astype(np.float32)
    default_tiles, default_cuts, tile, overlap = default_windows(run, args.size)
    # one network for both: predict_array's (cached in run.fast under this key with compile "off")
    net = fast_network(run.model, device, args.compile, args.precision)
    run.fast[(device.type, args.compile, args.precision)] = net

    def reference(steps: int) -> tuple[np.ndarray, int]:
        mean, count = reference_predict(
            net,
            normalized,
            patch,
            args.border,
            args.samples,
            steps,
            settings.seed,
            settings.solver,
            device,
            args.tile_noise,
        )
        return norm.denormalize_target(mean).astype(np.float32), count

    def default(steps: int | None) -> np.ndarray:
        kwargs = {"compile": args.compile, "precision": args.precision, "progress": False}
        return predict_array(run, image, samples=args.samples, steps=steps, **kwargs).mean

    reference(1), default(1)  # warm-up (allocator, threads, compilation) with one step
    times = {"reference": [], "default": []}
    cpu = {"reference": [], "default": []}
    for repeat in range(args.repeats):  # a b, b a, a b, ...: drifting load hits both alike
        for name in ("reference", "default")[:: 1 if repeat % 2 == 0 else -1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            if name == "reference":
                ref_mean, ref_tiles = reference(settings.steps)
            else:
                def_mean = default(None)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    ref_seconds, def_seconds = min(times["reference"]), min(times["default"])

    ref_cuts = reference_windows(args.size, patch, args.border)[1]
    counts = {
        "reference": (ref_tiles, reference_windows(EXTRAPOLATE_SIZE, patch, args.border)[0] ** 2),
        "default": (default_tiles, default_windows(run, EXTRAPOLATE_SIZE)[0]),
    }
    rows = {}
    for name, mean, seconds, cuts, other in (
        ("reference", ref_mean, ref_seconds, ref_cuts, default_cuts),
        ("default", def_mean, def_seconds, default_cuts, ref_cuts),
    ):
        here, at_1024 = counts[name]
        evaluations = here * args.samples * settings.steps
        big = at_1024 * EXTRAPOLATE_SAMPLES * settings.steps
        own = seam_ratios(mean, cuts)
        control = seam_ratios(mean, sorted(set(other) - set(cuts)))
        rows[name] = {
            "tiles": here,
            "evaluations": evaluations,
            "seconds": seconds,
            "cpu_seconds": min(cpu[name]),
            "per_eval": seconds / evaluations,
            "evaluations_1024": big,
            "seconds_1024": seconds / evaluations * big,
            "seam_max": max(own) if own else float("nan"),
            "seam_mean": float(np.mean(own)) if own else float("nan"),
            "control": max(control) if control else float("nan"),
        }
    diff = def_mean - ref_mean
    border = patch // 2
    inner = (slice(border, -border), slice(border, -border)) if args.size > 2 * border + 16 else (slice(None),) * 2
    value_range = float(ref_mean.max() - ref_mean.min())

    def compare(region) -> tuple[float, float]:
        rms = float(np.sqrt(np.mean(diff[region] ** 2)))
        return rms / float(ref_mean[region].std()), 10 * math.log10(value_range**2 / max(rms**2, 1e-30))

    return {
        "rows": rows,
        "whole": compare((slice(None), slice(None))),
        "inner": compare(inner),
        "settings": settings,
        "tile": tile,
        "overlap": overlap,
        "patch": patch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="edge of the square test image")
    parser.add_argument("--samples", type=int, default=8, help="posterior samples K per image")
    parser.add_argument("--device", nargs="+", default=["cpu"], choices=["cpu", "cuda"])
    parser.add_argument(
        "--checkpoint", type=Path, help="a released best_model.pth (else a perturbed fresh P = 128 network)"
    )
    parser.add_argument("--dataset", help="the release a --checkpoint of unknown sha256 belongs to")
    parser.add_argument("--perturb", type=float, default=0.02, help="std of the noise added to every weight")
    parser.add_argument("--border", choices=["reflect", "clamp"], default="reflect", help="reference scheme borders")
    parser.add_argument("--tile-noise", action="store_true", help="reference scheme: independent noise per window")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="off", help="both schemes")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="both schemes")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each, alternating; the fastest counts")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = []
    for name in args.device:
        if name == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: skipping --device cuda")
            continue
        devices.append(torch.device(name))

    with tempfile.TemporaryDirectory() as tmp:
        description = make_run(args, Path(tmp))
        results = {device.type: measure(args, Path(tmp) / "run", device) for device in devices}
    if not results:
        return
    first = next(iter(results.values()))
    s = first["settings"]
    source = args.checkpoint or f"fresh ReferenceUNet P={PATCH}, weights + N(0, {args.perturb}^2)"
    print(
        f"\n{source}; imported as a run ({description.imported.release or 'no release'}); "
        f"{args.size}^2 synthetic image, K={args.samples}, {s.solver} {s.steps} steps, seed {s.seed}; "
        f"threads {torch.get_num_threads()}\n"
        f"(a) reference: {first['patch']}^2 windows every {first['patch'] // 2} px keeping the central "
        f"{first['patch'] // 2}^2, borders {args.border}, noise "
        f"{'independent per window' if args.tile_noise else 'keyed on pixel position (shared with (b))'}\n"
        f"(b) default: predict_array, tile {first['tile']}, overlap {first['overlap']}\n"
    )
    print(
        f"| device | scheme | windows at {args.size}^2 | evaluations at {args.size}^2 | "
        f"s per {args.size}^2 image (measured) | CPU s (process) | ms per evaluation | evaluations at 1024^2, K=8 | "
        f"s per 1024^2 image, K=8 (EXTRAPOLATED) | seam max | seam mean | control max |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for device, result in results.items():
        for name, label in (("reference", "(a) keep centre"), ("default", "(b) predict_array")):
            r = result["rows"][name]
            print(
                f"| {device} | {label} | {r['tiles']} | {r['evaluations']} | {r['seconds']:.1f} | "
                f"{r['cpu_seconds']:.1f} | "
                f"{1000 * r['per_eval']:.1f} | {r['evaluations_1024']} | {r['seconds_1024']:.0f} | "
                f"{r['seam_max']:.3f} | {r['seam_mean']:.3f} | {r['control']:.3f} |"
            )
    print(
        "\n| device | time (a) / (b), measured | CPU time (a) / (b) | evaluations (a) / (b) at 1024^2 | "
        "RMS diff / MMSE std | "
        "PSNR (b) vs (a) | same, without a P/2 border |"
    )
    print("|---|---|---|---|---|---|---|")
    for device, result in results.items():
        a, b = result["rows"]["reference"], result["rows"]["default"]
        (rel, psnr), (rel_in, psnr_in) = result["whole"], result["inner"]
        print(
            f"| {device} | {a['seconds'] / b['seconds']:.2f} | {a['cpu_seconds'] / b['cpu_seconds']:.2f} | "
            f"{a['evaluations_1024'] / b['evaluations_1024']:.2f} | "
            f"{rel:.4f} | {psnr:.1f} dB | {rel_in:.4f}, {psnr_in:.1f} dB |"
        )


if __name__ == "__main__":
    main()

"""Sampler throughput on one image, measured side by side in one run with the same weights.

(a)  naive loop: fp32 eager, one tile and one sample per network call, exactly the tiles and hash
     noise of (b), plain Euler written out here; its MMSE must agree with (b) to 1e-4 relative.
(a') the reference's scheme: 128^2 tiles keeping only the inner 64^2, fresh torch.randn noise per
     tile, one tile and one sample per call (so it computes 4x the output pixels).
(b)  ``hazematching predict``'s path (``predict_array``): channels_last, inference_mode, samples and
     tiles batched where that helps, torch.compile when the job is large enough.
(c)  optionally the exported bioimage.io package through ``bioimageio predict`` (--package), timed
     against (b') the ``hazematching predict`` command on the same TIFF, both as subprocesses.

Throughput is output Mpx x samples x steps per second. (b) is timed twice: including compilation
and warm (second run), since compilation is paid once per process.

    python scripts/benchmark_sampler.py --model demo/run [--size 1024 --samples 2 --steps 4] [--package demo/model.zip]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from hazematching.core import hash_normal
from hazematching.data.io import read_split
from hazematching.predict import predict_array
from hazematching.run import load_model
from hazematching.tiling import tiles


def test_image(run, size: int) -> np.ndarray:
    """A size x size widefield image made of the run's validation images (tiled if needed)."""
    data = Path(run.config["training"]["data"])
    split = data / "val" if (data / "val").is_dir() else data
    image = read_split(split)[0].input.astype(np.float32)
    reps = (-(-size // image.shape[0]), -(-size // image.shape[1]))
    return np.tile(image, reps)[:size, :size]


@torch.no_grad()
def naive(run, image, samples, steps, seed, tile_size, overlap) -> np.ndarray:
    """(a): the textbook loop, one (tile, sample) at a time, same tiles and noise as predict."""
    net, norm = run.model.eval(), run.normalization
    height, width = image.shape
    cond_full = norm.normalize_input(image).astype(np.float32)
    all_tiles, th, tw = tiles(height, width, tile_size, overlap, run.model.stride)
    mean = np.zeros_like(image)
    for tile in all_tiles:
        cond = torch.from_numpy(np.ascontiguousarray(cond_full[tile.window(th, tw)]))[None, None]
        acc = torch.zeros_like(cond)
        for k in range(samples):
            x = hash_normal(seed, k, 1, 1, th, tw, torch.tensor([tile.y.start - height // 2]),
                            torch.tensor([tile.x.start - width // 2]))
            for i in range(steps):
                x = x + net(x, cond, torch.full([1], i / steps)) / steps
            acc += x
        mean[tile.kept()] = (acc / samples)[0, 0].numpy()[tile.kept_in_tile()]
    return norm.denormalize_target(mean)


@torch.no_grad()
def reference_scheme(run, image, samples, steps, seed) -> np.ndarray:
    """(a'): 128^2 tiles, keep the inner 64^2, fresh randn per tile (the authors' prediction)."""
    net, norm = run.model.eval(), run.normalization
    height, width = image.shape
    cond_full = np.pad(norm.normalize_input(image).astype(np.float32), 32, mode="reflect")
    generator = torch.Generator().manual_seed(seed)
    mean = np.zeros_like(image)
    for y in range(0, height, 64):
        for x0 in range(0, width, 64):
            cond = torch.from_numpy(np.ascontiguousarray(cond_full[y : y + 128, x0 : x0 + 128]))[None, None]
            acc = torch.zeros_like(cond)
            for _ in range(samples):
                x = torch.randn(cond.shape, generator=generator)
                for i in range(steps):
                    x = x + net(x, cond, torch.full([1], i / steps)) / steps
                acc += x
            block = (acc / samples)[0, 0, 32:96, 32:96].numpy()
            mean[y : y + 64, x0 : x0 + 64] = block[: min(64, height - y), : min(64, width - x0)]
    return norm.denormalize_target(mean)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo/run", help="HazeMatching run directory")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--compile", default="on", choices=["auto", "on", "off"], help="for (b)")
    parser.add_argument("--package", default=None, help="exported .zip to time through `bioimageio predict` (c)")
    parser.add_argument("--skip-reference", action="store_true", help="skip (a') (the slowest)")
    args = parser.parse_args()

    torch.manual_seed(0)
    run = load_model(args.model)
    image = test_image(run, args.size)
    work = args.size**2 / 1e6 * args.samples * args.steps
    options = dict(samples=args.samples, steps=args.steps, seed=args.seed, tile_size=args.tile_size, overlap=args.overlap,
                   progress=False)
    print(f"image {args.size}x{args.size}, K={args.samples} samples, N={args.steps} Euler steps, "
          f"{torch.get_num_threads()} CPU threads, device cpu, torch {torch.__version__}")

    rows = []
    ours_cold, t_cold = timed(lambda: predict_array(run, image, compile=args.compile, **options))
    ours, t_b = timed(lambda: predict_array(run, image, compile=args.compile, **options))
    plain, t_a = timed(lambda: naive(run, image, args.samples, args.steps, args.seed, args.tile_size, args.overlap))
    rows += [("(a)  naive, same tiles + noise", t_a), ("(b)  hazematching predict, warm", t_b),
             ("(b)  hazematching predict, incl. compile", t_cold)]
    if not args.skip_reference:
        _, t_ref = timed(lambda: reference_scheme(run, image, args.samples, args.steps, args.seed))
        rows.append(("(a') reference 128/64 tiling", t_ref))
    if args.package:  # both as the commands a user runs: process start, model loading, I/O included
        with tempfile.TemporaryDirectory() as tmp:
            tifffile.imwrite(Path(tmp) / "in.tif", image)
            ours_cmd = [sys.executable, "-m", "hazematching.cli", "predict", "--model", str(Path(args.model).resolve()),
                        "--input", "in.tif", "--output", "ours.tif", "--samples", str(args.samples), "--steps",
                        str(args.steps), "--seed", str(args.seed), "--tile-size", str(args.tile_size), "--overlap",
                        str(args.overlap), "--device", "cpu"]
            package_cmd = [sys.executable, "-m", "bioimageio.core", "predict", "--inputs", str(Path(tmp) / "in.tif"),
                           "--outputs", str(Path(tmp) / "{output_id}.tif"), str(Path(args.package).resolve())]
            for name, cmd in (("(b') `hazematching predict` command", ours_cmd),
                              (f"(c)  `bioimageio predict` {Path(args.package).name}", package_cmd)):
                result, seconds = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, cwd=tmp))
                if result.returncode != 0:
                    sys.exit(f"{name} failed:\n{result.stderr[-2000:]}")
                rows.append((name, seconds))
            package_mean = np.squeeze(tifffile.imread(Path(tmp) / "dehazed.tif"))[0]
            t_cli, t_pkg = rows[-2][1], rows[-1][1]

    print("\n| path | seconds | output Mpx·sample·step/s |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {work / seconds:.4f} |")
    difference = float(np.abs(ours.mean - plain).max() / np.abs(plain).max())
    print(f"\nmax |(b) - (a)| / max |(a)| = {difference:.2e} (must be <= 1e-4)")
    print(f"(b)/(a) speed-up (warm): {t_a / t_b:.2f}x; including compilation: {t_a / t_cold:.2f}x")
    if not args.skip_reference:
        print(f"(b)/(a') speed-up (warm): {t_ref / t_b:.2f}x; including compilation: {t_ref / t_cold:.2f}x")
    if args.package:
        agreement = float(np.abs(package_mean - ours.mean).max() / np.abs(ours.mean).max())
        print(f"(c)/(b') time ratio: {t_pkg / t_cli:.2f} (the package's own K, N must match --samples/--steps; "
              f"max |(c) - (b)| / max |(b)| = {agreement:.2e})")
    if difference > 1e-4:
        sys.exit("FAILED: (a) and (b) disagree")


if __name__ == "__main__":
    main()

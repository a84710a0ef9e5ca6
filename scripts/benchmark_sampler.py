"""Sampler throughput on one image, measured side by side in one run with the same weights.

(a)  naive loop: fp32 eager, one tile and one sample per network call, exactly the tiles and hash
     noise of (b), plain Euler written out here; its MMSE must agree with (b) to 1e-4 relative.
(a') the reference's scheme: 128^2 tiles keeping only the inner 64^2, fresh torch.randn noise per
     tile, one tile and one sample per call (so it computes 4x the output pixels).
(b)  ``hazematching predict``'s path (``predict_array``): channels_last (fused layer norms),
     inference_mode, samples and tiles batched where that helps, torch.compile (``--compile``).
(c)  optionally the exported bioimage.io package through ``bioimageio predict`` (--package), timed
     against (b') the ``hazematching predict`` command on the same TIFF, both as subprocesses.

Throughput is output Mpx x samples x steps per second. (b) is timed twice: including compilation
and warm (second run), since compilation is paid once per process. Each in-process row also gets
its network FLOP rate and the share of the device's measured fp32 (bf16) matrix-product peak (model
FLOP utilisation); on a CPU the script also measures the time (b) spends in convolutions alone,
which bounds any speed-up over (a) that keeps the same tiles and arithmetic.

    python scripts/benchmark_sampler.py --model demo/run [--size 1024 --samples 2 --steps 4] [--package demo/model.zip]
    python scripts/benchmark_sampler.py --model RUN --device cuda     # adds bf16 and 8 samples x 20 steps rows
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch
from benchmarking import flops_per_pixel, matmul_peak, timed

from hazematching.core import hash_normal
from hazematching.data.io import read_split
from hazematching.inference.predict import predict_array
from hazematching.inference.speed import bf16_supported
from hazematching.inference.tiling import tiles
from hazematching.run import load_model


def test_image(run, size: int) -> np.ndarray:
    """A size x size widefield image made of the run's validation images (tiled if needed)."""
    data = run.config.training.data
    split = data / "val" if (data / "val").is_dir() else data
    image = read_split(split)[0].input.astype(np.float32)
    reps = (-(-size // image.shape[0]), -(-size // image.shape[1]))
    return np.tile(image, reps)[:size, :size]


@torch.no_grad()
def naive(run, image, samples, steps, seed, tile_size, overlap) -> np.ndarray:
    """(a): the textbook loop, one (tile, sample) at a time, same tiles and noise as predict."""
    net, norm = run.model.eval(), run.normalization
    device = next(net.parameters()).device
    height, width = image.shape
    cond_full = norm.normalize_input(image).astype(np.float32)
    all_tiles, th, tw = tiles(height, width, tile_size, overlap, run.model.stride)
    mean = np.zeros_like(image)
    for tile in all_tiles:
        cond = torch.from_numpy(np.ascontiguousarray(cond_full[tile.window(th, tw)]))[None, None].to(device)
        acc = torch.zeros_like(cond)
        for k in range(samples):
            x = hash_normal(
                seed,
                k,
                1,
                1,
                th,
                tw,
                torch.tensor([tile.y.start - height // 2]),
                torch.tensor([tile.x.start - width // 2]),
                device,
            )
            for i in range(steps):
                x = x + net(x, cond, torch.full([1], i / steps, device=device)) / steps
            acc += x
        mean[tile.kept()] = (acc / samples)[0, 0].cpu().numpy()[tile.kept_in_tile()]
    return norm.denormalize_target(mean)


@torch.no_grad()
def reference_scheme(run, image, samples, steps, seed) -> np.ndarray:
    """(a'): 128^2 tiles, keep the inner 64^2, fresh randn per tile (the authors' prediction)."""
    net, norm = run.model.eval(), run.normalization
    device = next(net.parameters()).device
    height, width = image.shape
    cond_full = np.pad(norm.normalize_input(image).astype(np.float32), 32, mode="reflect")
    generator = torch.Generator(device=device).manual_seed(seed)
    mean = np.zeros_like(image)
    for y in range(0, height, 64):
        for x0 in range(0, width, 64):
            cond = torch.from_numpy(np.ascontiguousarray(cond_full[y : y + 128, x0 : x0 + 128]))[None, None].to(device)
            acc = torch.zeros_like(cond)
            for _ in range(samples):
                x = torch.randn(cond.shape, generator=generator, device=device)
                for i in range(steps):
                    x = x + net(x, cond, torch.full([1], i / steps, device=device)) / steps
                acc += x
            block = (acc / samples)[0, 0, 32:96, 32:96].cpu().numpy()
            mean[y : y + 64, x0 : x0 + 64] = block[: min(64, height - y), : min(64, width - x0)]
    return norm.denormalize_target(mean)


def convolution_seconds(net, th: int, tw: int) -> float:
    """CPU seconds one call of ``net`` on a th x tw tile spends in convolutions (torch.profiler)."""
    x = torch.randn(1, 1, th, tw)
    t = torch.full([1], 0.5)
    with torch.inference_mode():
        net(x, x, t)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                net(x, x, t)
    return sum(e.self_cpu_time_total for e in prof.key_averages() if "convolution" in e.key) / 3 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo/run", help="HazeMatching run directory")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile", default="on", choices=["auto", "on", "off"], help="for (b)")
    parser.add_argument("--bf16", action="store_true", help="add (b) under bf16 autocast (default on cuda)")
    parser.add_argument(
        "--paper-settings",
        action="store_true",
        help="add (b) with 8 samples x 20 Euler steps, bf16 where supported (default on cuda)",
    )
    parser.add_argument("--package", default=None, help="exported .zip to time through `bioimageio predict` (c)")
    parser.add_argument("--skip-reference", action="store_true", help="skip (a') (the slowest)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is visible")

    torch.manual_seed(0)
    run = load_model(args.model, device)
    image = test_image(run, args.size)
    work = args.size**2 / 1e6 * args.samples * args.steps
    options = dict(
        samples=args.samples,
        steps=args.steps,
        seed=args.seed,
        tile_size=args.tile_size,
        overlap=args.overlap,
        progress=False,
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(
        f"image {args.size}x{args.size}, K={args.samples} samples, N={args.steps} Euler steps, {name}, "
        f"torch {torch.__version__}"
    )

    per_pixel = flops_per_pixel(run.model, device)
    all_tiles, th, tw = tiles(args.size, args.size, args.tile_size, args.overlap, run.model.stride)
    calls = len(all_tiles) * args.samples * args.steps  # network calls of one tile each in (a) and (b)
    tiled_flops = calls * th * tw * per_pixel
    reference_flops = (-(-args.size // 64)) ** 2 * args.samples * args.steps * 128**2 * per_pixel
    bf16_rows = args.bf16 or device.type == "cuda"
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    if bf16_rows or bf16_supported(device):
        peaks["bf16"] = matmul_peak(device, torch.bfloat16)

    rows = []  # (name, seconds, network FLOPs or None, precision); output work is K x N x Mpx unless noted
    fast = lambda **extra: predict_array(run, image, compile=args.compile, **{**options, **extra})  # noqa: E731
    # (b) at fp32, because (a) is fp32 and they must agree to 1e-4; the default precision (bf16 on a GPU)
    # has its own rows below
    ours_cold, t_cold = timed(lambda: fast(precision="fp32"), device)
    ours, t_b = timed(lambda: fast(precision="fp32"), device)
    plain, t_a = timed(
        lambda: naive(run, image, args.samples, args.steps, args.seed, args.tile_size, args.overlap), device
    )
    rows += [
        ("(a)  naive, same tiles + noise", t_a, tiled_flops, "fp32"),
        ("(b)  hazematching predict, fp32, warm", t_b, tiled_flops, "fp32"),
        ("(b)  hazematching predict, fp32, incl. compile", t_cold, tiled_flops, "fp32"),
    ]
    if bf16_rows:
        timed(lambda: fast(precision="bf16"), device)
        ours_bf16, t_bf16 = timed(lambda: fast(precision="bf16"), device)
        rows.append(("(b)  hazematching predict, bf16 autocast, warm", t_bf16, tiled_flops, "bf16"))
    if not args.skip_reference:
        _, t_ref = timed(lambda: reference_scheme(run, image, args.samples, args.steps, args.seed), device)
        rows.append(("(a') reference 128/64 tiling", t_ref, reference_flops, "fp32"))
    paper_label = None
    if args.paper_settings or device.type == "cuda":
        precision = "bf16" if bf16_supported(device) else "fp32"
        paper = dict(samples=8, steps=20, precision=precision)
        timed(lambda: fast(**paper), device)
        _, t_paper = timed(lambda: fast(**paper), device)
        paper_label = f"(b)  K=8 x N=20 Euler, {precision}, warm"
        rows.append((paper_label, t_paper, tiled_flops * 8 * 20 / (args.samples * args.steps), precision))
    if args.package:  # both as the commands a user runs: process start, model loading, I/O included
        with tempfile.TemporaryDirectory() as tmp:
            tifffile.imwrite(Path(tmp) / "in.tif", image)
            ours_cmd = [
                sys.executable,
                "-m",
                "hazematching.cli",
                "predict",
                "--model",
                str(Path(args.model).resolve()),
                "--input",
                "in.tif",
                "--output",
                "ours.tif",
                "--samples",
                str(args.samples),
                "--steps",
                str(args.steps),
                "--seed",
                str(args.seed),
                "--tile-size",
                str(args.tile_size),
                "--overlap",
                str(args.overlap),
                "--device",
                args.device,
            ]
            package_cmd = [
                sys.executable,
                "-m",
                "bioimageio.core",
                "predict",
                "--inputs",
                str(Path(tmp) / "in.tif"),
                "--outputs",
                str(Path(tmp) / "{output_id}.tif"),
                str(Path(args.package).resolve()),
            ]
            for label, cmd in (
                ("(b') `hazematching predict` command", ours_cmd),
                (f"(c)  `bioimageio predict` {Path(args.package).name}", package_cmd),
            ):
                result, seconds = timed(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, text=True, cwd=tmp))
                if result.returncode != 0:
                    sys.exit(f"{label} failed:\n{result.stderr[-2000:]}")
                rows.append((label, seconds, None, None))
            package_mean = np.squeeze(tifffile.imread(Path(tmp) / "dehazed.tif"))[0]
            t_cli, t_pkg = rows[-2][1], rows[-1][1]

    peak_text = ", ".join(f"{k} {v / 1e9:.3g} GFLOP/s" for k, v in peaks.items())
    print(
        f"\nnetwork: {per_pixel / 1e6:.3f} MFLOP per pixel and call; (a)/(b): {calls} calls on {th}x{tw} tiles; "
        f"measured matrix-product peak: {peak_text}"
    )
    print("\n| path | seconds | output Mpx·sample·step/s | network GFLOP/s | % of peak |\n|---|---|---|---|---|")
    for label, seconds, flops, precision in rows:
        output_work = work * 8 * 20 / (args.samples * args.steps) if label == paper_label else work
        rate = "–" if flops is None else f"{flops / seconds / 1e9:.0f}"
        share = "–" if flops is None else f"{100 * flops / seconds / peaks[precision]:.0f}"
        print(f"| {label} | {seconds:.1f} | {output_work / seconds:.4f} | {rate} | {share} |")
    difference = float(np.abs(ours.mean - plain).max() / np.abs(plain).max())
    print(f"\nmax |(b) - (a)| / max |(a)| = {difference:.2e} (must be <= 1e-4)")
    print(f"(b)/(a) speed-up (warm): {t_a / t_b:.2f}x; including compilation: {t_a / t_cold:.2f}x")
    if device.type == "cpu":
        floor = calls * convolution_seconds(run.fast[("cpu", args.compile, "fp32")], th, tw)
        print(
            f"convolutions alone in (b) (torch.profiler, one call x {calls}): {floor:.1f} s, "
            f"so any (b) with these tiles is at most {t_a / floor:.2f}x faster than (a) on this machine"
        )
    if bf16_rows:
        bf16_difference = float(np.abs(ours_bf16.mean - ours.mean).max() / np.abs(ours.mean).max())
        print(f"bf16 / fp32 (b) speed-up: {t_b / t_bf16:.2f}x; max |bf16 - fp32| / max |fp32| = {bf16_difference:.2e}")
    if not args.skip_reference:
        print(f"(b)/(a') speed-up (warm): {t_ref / t_b:.2f}x; including compilation: {t_ref / t_cold:.2f}x")
    if args.package:
        agreement = float(np.abs(package_mean - ours.mean).max() / np.abs(ours.mean).max())
        print(
            f"(c)/(b') time ratio: {t_pkg / t_cli:.2f} (the package's own K, N must match --samples/--steps; "
            f"max |(c) - (b)| / max |(b)| = {agreement:.2e})"
        )
    if difference > 1e-4:
        sys.exit("FAILED: (a) and (b) disagree")


if __name__ == "__main__":
    main()

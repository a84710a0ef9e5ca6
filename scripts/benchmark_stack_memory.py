"""Peak resident memory of `hazematching predict` on a large stack vs a small one, side by side.

Writes a uint16 ZYX stack of --gib GiB (and one of --small-gib GiB with the same planes), plane by
plane, as an ImageJ TIFF or (--format omezarr, needs zarr>=3) an NGFF 0.5 OME-Zarr image chunked one
plane per chunk, runs `hazematching predict` on each in a child process and prints each child's
peak RSS (from /proc/PID/status VmHWM, so this script's memory is not counted) and their ratio:
if prediction streams plane by plane, the big stack needs no more memory than the small one.

Without --model a run with a tiny random network is made (the pixels do not matter here, and a
2 GiB stack then takes minutes, not hours, on a CPU); pass --model RUN for a real one.

    python scripts/benchmark_stack_memory.py --gib 2
    python scripts/benchmark_stack_memory.py --gib 2 --format omezarr
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch


def tiny_run(folder: Path) -> Path:
    from hazematching.config import TrainConfig
    from hazematching.core import UNet
    from hazematching.run import FORMAT_VERSION, RunDescription, save_run

    architecture = dict(
        in_channels=1,
        cond_channels=1,
        out_channels=1,
        base_channels=8,
        channel_mults=[1],
        num_res_blocks=1,
        attention_levels=[],
        norm="channel",
        dropout=0.0,
        time_conditioning=True,
    )
    torch.manual_seed(0)
    description = RunDescription(
        format_version=FORMAT_VERSION,
        objective="cfm",
        architecture=architecture,
        normalization={"input_mean": 300.0, "input_std": 100.0, "target_mean": 300.0, "target_std": 100.0},
        sampler={"samples": 1, "steps": 1, "seed": 0},
        training=TrainConfig(data="none", output_dir=str(folder)),
        step=0,
    )
    save_run(folder, UNet(**architecture).state_dict(), description)
    return folder


def write_stack(path: Path, planes: int, size: int) -> None:
    rng = np.random.default_rng(0)
    plane = (rng.gamma(2.0, 100.0, (size, size)) + 100).astype(np.uint16)
    with tifffile.TiffWriter(path, imagej=True) as tif:  # one plane in memory at a time
        tif.write(
            (np.roll(plane, i, axis=1) for i in range(planes)),
            shape=(planes, size, size),
            dtype=np.uint16,
            metadata={"axes": "ZYX"},
        )


def write_ome_zarr(path: Path, planes: int, size: int) -> None:
    import zarr

    rng = np.random.default_rng(0)
    plane = (rng.gamma(2.0, 100.0, (size, size)) + 100).astype(np.uint16)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = group.create_array(
        "0", shape=(planes, size, size), chunks=(1, size, size), dtype="uint16", dimension_names=["z", "y", "x"]
    )
    for i in range(planes):  # one plane in memory at a time
        array[i] = np.roll(plane, i, axis=1)
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    scale = {"type": "scale", "scale": [0.3, 0.1, 0.1]}
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {"name": "stack", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [scale]}]}
        ],
    }


def size_gib(path: Path) -> float:
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**30


def peak_rss_gib(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GiB) of a child process, polled from /proc while it runs."""
    start, peak = time.perf_counter(), 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.2)
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"predict failed:\n{output[-3000:]}")
    return time.perf_counter() - start, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="run directory (default: a tiny random network)")
    parser.add_argument("--gib", type=float, default=2.0, help="size of the big uint16 stack")
    parser.add_argument("--small-gib", type=float, default=0.0625, help="size of the small stack")
    parser.add_argument("--plane", type=int, default=1024, help="plane edge in pixels")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="folder for the stacks (default: a temporary folder)")
    parser.add_argument("--format", choices=["tiff", "omezarr"], default="tiff", help="input (and output) format")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else tiny_run(tmp / "run")
        rows = []
        for label, gib in (("small", args.small_gib), ("big", args.gib)):
            planes = max(1, round(gib * 2**30 / (2 * args.plane**2)))
            suffix = ".ome.zarr" if args.format == "omezarr" else ".tif"
            src = tmp / f"{label}{suffix}"
            (write_ome_zarr if args.format == "omezarr" else write_stack)(src, planes, args.plane)
            cmd = [
                sys.executable,
                "-m",
                "hazematching",
                "predict",
                "--model",
                str(model),
                "--input",
                str(src),
                "--output",
                str(tmp / f"{label}_out{suffix}"),
                "--samples",
                str(args.samples),
                "--steps",
                str(args.steps),
                "--device",
                "cpu",
                "--quiet",
            ]
            seconds, peak = peak_rss_gib(cmd)
            raw_gib = planes * args.plane**2 * 2 / 2**30
            rows.append((label, planes, raw_gib, seconds, peak))
            print(
                f"{label}: {planes} planes of {args.plane}^2 uint16 ({raw_gib:.2f} GiB of pixels, "
                f"{size_gib(src):.2f} GiB on disk as {args.format}; {2 * raw_gib * 2:.2f} GiB float32 mean + std "
                f"out): {seconds:.0f} s, peak RSS {peak:.3f} GiB",
                flush=True,
            )
            for path in tmp.glob(f"{label}*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        (small, big) = rows
        print(
            json.dumps(
                {
                    "format": args.format,
                    "stack_gib": round(big[2], 3),
                    "peak_rss_gib": round(big[4], 3),
                    "small_stack_gib": round(small[2], 3),
                    "small_peak_rss_gib": round(small[4], 3),
                    "rss_ratio_big_over_small": round(big[4] / small[4], 3),
                    "stack_size_ratio": round(big[2] / small[2], 1),
                }
            )
        )


if __name__ == "__main__":
    main()

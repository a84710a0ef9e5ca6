"""Training throughput (samples/s), measured side by side in one run at the same model and batch.

(r)  a reference-style loop: fp32 eager, torch.optim.Adam, random crops from in-memory images,
     t on the reference's 20-point grid, noise drawn with torch.randn; no EMA, no checkpoints.
(1)  ``trainer/train.py`` in one process.
(2)  ``trainer/train.py`` in two processes forming one gloo group (accelerate_configs/cpu_2proc.yaml,
     ranks checked to hold identical weights), each with the same per-process batch (CPU only).

On a CPU every process gets the same number of threads (``--threads``, default 1), so the
1 -> 2 process factor measures what distribution adds and costs, not how well one process uses
several cores. With ``--device cuda`` the rows are, at every batch size of ``--batch-sizes``: the
reference loop, the trainer in fp32, bf16 eager and bf16 compiled (``single_gpu.yaml``), and the
shipped ``deepspeed_zero2.yaml`` / ``deepspeed_zero3.yaml`` (bf16, one process). Each row gets its
model FLOP utilisation: 3 x forward FLOPs per sample (forward + backward) x samples/s over the
measured matrix-product peak (bf16 on a GPU, fp32 on a CPU). A row that fails is reported and the
next one still runs.

    python scripts/benchmark_training.py --data demo/data [--steps 60 --batch-sizes 8 --crop-size 64]
    python scripts/benchmark_training.py --data DATA --device cuda --batch-sizes 32,256 --crop-size 128
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
import torch
import torch.nn.functional as F
from benchmarking import flops_per_pixel, matmul_peak

from hazematching.core import UNet
from hazematching.data.io import load_splits
from hazematching.data.normalization import Normalization

ROOT = Path(__file__).resolve().parents[1]


def reference_loop(data: Path, steps: int, warmup: int, batch: int, crop: int, device: str) -> float:
    """Samples/s of the plain loop the reference code uses."""
    train, _ = load_splits(data, None, 0.15, crop)
    norm = Normalization.from_pairs(train)
    images = [(norm.normalize_input(p.input), norm.normalize_target(p.target)) for p in train]
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = UNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    grid = torch.linspace(0, 1, 20)

    def batch_tensors():
        cond, target = [], []
        for _ in range(batch):
            inp, tgt = images[rng.integers(len(images))]
            y, x = rng.integers(0, inp.shape[0] - crop + 1), rng.integers(0, inp.shape[1] - crop + 1)
            cond.append(inp[y : y + crop, x : x + crop])
            target.append(tgt[y : y + crop, x : x + crop])
        return (
            torch.from_numpy(np.stack(cond)[:, None].astype(np.float32)).to(device),
            torch.from_numpy(np.stack(target)[:, None].astype(np.float32)).to(device),
        )

    for step in range(warmup + steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        cond, x1 = batch_tensors()
        x0 = torch.randn_like(x1)
        t = grid[torch.randint(0, 20, (batch,))].to(device)
        xt = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * x0
        loss = F.mse_loss(model(xt, cond, t), x1 - x0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def trainer(
    data: Path,
    steps: int,
    warmup: int,
    batch: int,
    crop: int,
    processes: int,
    threads: int,
    extra: list[str],
    config: str | None = None,
) -> tuple[float, dict]:
    """Samples/s of trainer/train.py from its own log (windows after ``warmup`` steps, so compilation
    is not counted). Raises RuntimeError with the trainer's last output if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = [
            str(ROOT / "trainer" / "train.py"),
            "--data",
            str(data),
            "--output-dir",
            str(out),
            "--max-steps",
            str(warmup + steps),
            "--batch-size",
            str(batch),
            "--crop-size",
            str(crop),
            "--checkpointing-steps",
            str(10**9),
            "--validation-steps",
            "0",
            "--log-steps",
            str(max(1, warmup)),
            *extra,
        ]
        if config or processes > 1:
            cmd = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                str(ROOT / "accelerate_configs" / (config or "cpu_2proc.yaml")),
                "--num_processes",
                str(processes),
                *args,
            ]
        else:
            cmd = [sys.executable, *args]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        records = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
        run_config = json.loads((out / "config.json").read_text())
    timed = [r["train/samples_per_s"] for r in records if r["step"] > warmup]
    return float(np.mean(timed)), run_config


def training_flops_per_sample(crop: int, device: torch.device) -> float:
    """Forward + backward FLOPs of the default U-Net per crop (backward ~ 2x forward)."""
    return 3 * flops_per_pixel(UNet().to(device), device, crop) * crop**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("demo/data"))
    parser.add_argument("--steps", type=int, default=60, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens there)")
    parser.add_argument("--batch-sizes", default="8", help="comma-separated batch sizes per process")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    peak_dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    peak = matmul_peak(device, peak_dtype)
    flops = training_flops_per_sample(args.crop_size, device)
    peak_name = str(peak_dtype).split(".")[-1]
    print(
        f"{args.crop_size}^2 crops, default U-Net ({flops / 1e9:.2f} GFLOP per sample, forward + backward), "
        f"{args.steps} timed steps after {args.warmup}, device {args.device}, {args.threads} thread(s) per process, "
        f"torch {torch.__version__}; measured {peak_name} matrix-product peak {peak / 1e12:.3g} TFLOP/s "
        "(per process: on a CPU, multi-process rows are relative to one process's threads)"
    )
    print("\n| batch | setting | samples/s | MFU % |\n|---|---|---|---|", flush=True)
    results: dict[tuple[int, str], float] = {}

    def row(batch: int, name: str, measure, *measure_args) -> None:
        try:
            value = measure(*measure_args)
        except Exception as exc:  # report and go on: one broken setting must not hide the others
            reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            print(f"| {batch} | {name} | FAILED: {reason} | |", flush=True)
            return
        results[(batch, name)] = value
        print(f"| {batch} | {name} | {value:.1f} | {100 * value * flops / peak:.1f} |", flush=True)

    def samples_per_s(batch: int, extra: list[str], config: str | None = None) -> float:
        common = (args.data, args.steps, args.warmup, batch, args.crop_size)
        return trainer(*common, processes=1, threads=args.threads, extra=extra, config=config)[0]

    def two_processes(batch: int) -> float:
        common = (args.data, args.steps, args.warmup, batch, args.crop_size)
        value, run_config = trainer(*common, processes=2, threads=args.threads, extra=["--mixed-precision", "no"])
        checksums = run_config.get("rank_weight_checksums", [])
        if len(checksums) != 2 or checksums[0] != checksums[1]:
            raise RuntimeError(f"the two ranks did not train one model (weight checksums {checksums})")
        return value

    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        row(batch, "reference", reference_loop, args.data, args.steps, args.warmup, batch, args.crop_size, args.device)
        if args.device == "cpu":
            row(batch, "trainer", samples_per_s, batch, ["--mixed-precision", "no"])
            row(batch, "trainer, 2 processes (gloo)", two_processes, batch)
            continue
        row(
            batch,
            "trainer fp32",
            samples_per_s,
            batch,
            ["--mixed-precision", "no", "--compile", "off"],
            "single_gpu.yaml",
        )
        row(batch, "trainer bf16 eager", samples_per_s, batch, ["--compile", "off"], "single_gpu.yaml")
        row(batch, "trainer bf16 compiled", samples_per_s, batch, ["--compile", "on"], "single_gpu.yaml")
        for stage in (2, 3):
            row(batch, f"DeepSpeed ZeRO-{stage} bf16", samples_per_s, batch, [], f"deepspeed_zero{stage}.yaml")

    print()
    for (batch, name), value in results.items():
        reference = results.get((batch, "reference"))
        if reference and name != "reference":
            print(f"batch {batch}: {name} / reference = {value / reference:.2f}x", flush=True)
        plain = results.get((batch, "trainer bf16 eager"))  # DeepSpeed trains eagerly unless --compile on
        if plain and name.startswith("DeepSpeed"):
            print(f"batch {batch}: {name} / trainer bf16 eager = {value / plain:.2f}x", flush=True)


if __name__ == "__main__":
    main()

"""Training throughput (samples/s), measured side by side in one run at the same model and batch.

(r)  a reference-style loop: fp32 eager, torch.optim.Adam, random crops from in-memory images,
     t on the reference's 20-point grid; no EMA, no checkpoints, no logging.
(1)  ``trainer/train.py`` in one process.
(2)  ``trainer/train.py`` in two processes forming one gloo group (accelerate_configs/cpu_2proc.yaml,
     ranks checked to hold identical weights), each with the same per-process batch.

On a CPU every process gets the same number of threads (``--threads``, default 1), so the
1 -> 2 process factor measures what distribution adds and costs, not how well one process uses
several cores. On a GPU run it with ``--device cuda`` to add bf16 and DeepSpeed ZeRO-2 rows.

    python scripts/benchmark_training.py --data demo/data [--steps 60 --batch-size 8 --crop-size 64]
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
        return (torch.from_numpy(np.stack(cond)[:, None].astype(np.float32)).to(device),
                torch.from_numpy(np.stack(target)[:, None].astype(np.float32)).to(device))

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


def trainer(data: Path, steps: int, warmup: int, batch: int, crop: int, processes: int, threads: int,
            extra: list[str], config: str | None = None) -> tuple[float, dict]:
    """Samples/s of trainer/train.py from its own log (windows after ``warmup`` steps)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = [str(ROOT / "trainer" / "train.py"), "--data", str(data), "--output-dir", str(out),
                "--max-steps", str(warmup + steps), "--batch-size", str(batch), "--crop-size", str(crop),
                "--checkpointing-steps", str(10**9), "--validation-steps", "0", "--log-steps", str(max(1, warmup)),
                *extra]
        if config or processes > 1:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "accelerate_configs" / (config or "cpu_2proc.yaml")), "--num_processes", str(processes), *args]
        else:
            cmd = [sys.executable, *args]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            sys.exit(f"trainer failed:\n{result.stderr[-3000:]}")
        records = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
        run_config = json.loads((out / "config.json").read_text())
    timed = [r["train/samples_per_s"] for r in records if r["step"] > warmup]
    return float(np.mean(timed)), run_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("demo/data"))
    parser.add_argument("--steps", type=int, default=60, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()

    common = (args.data, args.steps, args.warmup, args.batch_size, args.crop_size)
    print(f"batch {args.batch_size} per process, {args.crop_size}^2 crops, default U-Net, {args.steps} timed steps "
          f"after {args.warmup}, device {args.device}, {args.threads} thread(s) per process, torch {torch.__version__}")
    rows = []
    torch.set_num_threads(args.threads)
    rows.append(("(r) reference-style fp32 eager Adam loop, 1 process", reference_loop(*common, args.device)))
    one, _ = trainer(*common, processes=1, threads=args.threads, extra=["--mixed-precision", "no"])
    rows.append(("(1) trainer/train.py, 1 process", one))
    if args.device == "cpu":
        two, run_config = trainer(*common, processes=2, threads=args.threads, extra=["--mixed-precision", "no"])
        checksums = run_config.get("rank_weight_checksums", [])
        rows.append(("(2) trainer/train.py, 2 processes (gloo)", two))
        if len(checksums) != 2 or checksums[0] != checksums[1]:
            sys.exit(f"FAILED: the two ranks did not train one model (weight checksums {checksums})")
    else:
        rows.append(("trainer/train.py, 1 GPU, bf16", trainer(*common, processes=1, threads=args.threads,
                                                            extra=["--mixed-precision", "bf16"], config="single_gpu.yaml")[0]))
        rows.append(("trainer/train.py, 1 GPU, DeepSpeed ZeRO-2", trainer(*common, processes=1, threads=args.threads,
                                                                          extra=[], config="deepspeed_zero2.yaml")[0]))

    print("\n| setting | samples/s |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.2f} |")
    print(f"\ntrainer / reference loop (1 process): {one / rows[0][1]:.2f}x")
    if args.device == "cpu":
        print(f"2 processes / 1 process: {two / one:.2f}x (ranks' weight checksums equal: {checksums[0]:.6f})")


if __name__ == "__main__":
    main()

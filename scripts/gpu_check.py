"""The project's one-call GPU check: correctness and speed of everything that only a GPU shows.

    python scripts/gpu_check.py LOGDIR [--package demo/model.zip] [--budget 480]

Rows, most important first; each prints its figures as soon as they are measured and logs under
LOGDIR/<row>.log, and a failing row is reported while the next one still runs:

1. DeepSpeed ZeRO-2 and ZeRO-3 as shipped (bf16): a few steps, resume from ``latest``, fp32 weights
   that load and are finite.
2. Training samples/s (``benchmark_training.py --device cuda``): reference loop, trainer fp32 / bf16
   eager / bf16 compiled, DeepSpeed ZeRO-2/3 bf16, at batch 32 and 256, 128^2 crops, MFU per row.
3. The sampler table (``benchmark_sampler.py``, 1024^2, K = 8, N = 20): default, eager, naive loop, MFU.
4. ``hazematching predict`` as a user runs it (fresh process, empty compile cache, CLI defaults):
   one 1024^2 image and a folder of 20, ``--compile auto`` against ``--compile off``, and a 2048^2
   image after a 1024^2 one in the same process (compiled network reused across sizes).
5. With ``--package``: the exported TorchScript on CUDA against its CPU-made test output.

Needs no download: training data are synthetic pairs written here (blurred random filaments; only
throughput and correctness are measured, not quality), the run for rows 3-4 is trained here. Rows
whose estimated time no longer fits ``--budget`` seconds are skipped with a message. ``--device cpu
--quick`` is a dry run of every code path with tiny sizes (no GPU figures).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
PROGRESS_BAR = re.compile(r"\d+%\|")
NOISE = re.compile(r"Warning|warnings.warn|return func\(|^\s*$|^\[\d{4}-\d\d-\d\d |^\s*\[A")  # logged, not echoed


def synthetic_pairs(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """2-channel TIFFs in the paper's layout (0 = confocal-like target, 1 = hazy widefield input)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        structure = np.zeros((size, size), np.float32)
        for _ in range(40):  # random walks: filaments
            y, x = rng.uniform(0, size, 2)
            angle = rng.uniform(0, 2 * np.pi)
            for _ in range(size // 2):
                angle += rng.normal(0, 0.2)
                y, x = (y + np.sin(angle)) % size, (x + np.cos(angle)) % size
                structure[int(y), int(x)] += 1
        target = gaussian_filter(structure, 1.0)
        hazy = gaussian_filter(structure, 2.5) + gaussian_filter(structure, 12.0) * 4
        target = rng.poisson(200 * target / target.max() + 5).astype(np.uint16)
        hazy = rng.poisson(200 * hazy / hazy.max() + 20).astype(np.uint16)
        tifffile.imwrite(folder / f"pair_{i:03d}.tif", np.stack([target, hazy]))


class Check:
    """Runs rows against a time budget; every row's output goes to the terminal and LOGDIR/<row>.log."""

    def __init__(self, logdir: Path, budget: float, rows: set[str]):
        self.logdir, self.budget, self.rows, self.start = logdir, budget, rows, time.perf_counter()
        self.summary: list[str] = []

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def say(self, text: str, log: str = "summary", echo: bool = True) -> None:
        if echo:
            print(text, flush=True)
        with open(self.logdir / f"{log}.log", "a") as f:
            f.write(text + "\n")

    def row(self, name: str, estimate: float, fn, wanted: bool | None = None) -> None:
        """Runs ``fn(log)`` unless the row was not asked for or ``estimate`` seconds no longer fit; ``log``
        names the row's log file. Estimates are the H100 times of 2026-11-26."""
        if not (wanted if wanted is not None else name.split(".")[0].rstrip("ab") in self.rows):
            return
        if self.left() < estimate:
            self.say(f"## {name}: SKIPPED ({self.left():.0f} s left, needs ~{estimate:.0f} s)")
            return
        self.say(f"## {name}")
        tic = time.perf_counter()
        try:
            fn(re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower())
            self.say(f"## {name}: done in {time.perf_counter() - tic:.0f} s")
        except Exception as exc:  # report and go on: one broken row must not hide the others
            self.say(
                f"## {name}: FAILED after {time.perf_counter() - tic:.0f} s: {type(exc).__name__}: {str(exc)[-1500:]}"
            )

    def command(self, log: str, cmd: list[str], timeout: float | None = None, **kwargs) -> tuple[str, float]:
        """Runs ``cmd`` (output streamed to the terminal and the row's log); returns (output, seconds)."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            **kwargs.pop("env", {}),
        }
        tic = time.perf_counter()
        lines = []
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, **kwargs
        ) as proc:
            for line in proc.stdout:
                lines.append(line)
                if not PROGRESS_BAR.search(line):  # progress bars stay out of the terminal and the logs
                    self.say(line.rstrip(), log, echo=not NOISE.search(line))
                if timeout is not None and time.perf_counter() - tic > timeout:
                    proc.kill()
                    raise TimeoutError(f"{' '.join(cmd[:4])} ran past {timeout:.0f} s")
        seconds = time.perf_counter() - tic
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {''.join(lines)[-1500:]}")
        return "".join(lines), seconds


def train_command(config: str | None, *args: str) -> list[str]:
    launch = (
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "accelerate_configs" / config),
            "--num_processes",
            "1",
        ]
        if config
        else [sys.executable]
    )
    return [*launch, str(ROOT / "trainer" / "train.py"), *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir", type=Path)
    parser.add_argument("--package", type=Path, default=None, help="exported .zip to run on the device")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all rows (default 8 minutes)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every code path")
    parser.add_argument(
        "--rows",
        default="1,2,3,4,5",
        help="rows to run, e.g. 3,4,5 (default: all; on an H100 rows 1-2 take ~7 min, rows 3-5 ~5 min)",
    )
    args = parser.parse_args()
    logdir = args.logdir.resolve()
    logdir.mkdir(parents=True, exist_ok=True)
    check = Check(logdir, args.budget, {row.strip() for row in args.rows.split(",")})
    quick = args.quick
    size, image_size, folder_images = (128, 256, 3) if quick else (256, 1024, 20)
    crop, batches = ("64", "4") if quick else ("128", "32,256")
    check.say(
        f"# gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, quick={quick}"
    )

    data = logdir / "data"
    synthetic_pairs(data / "train", 6 if quick else 24, size)
    synthetic_pairs(data / "val", 2, size, seed=1)
    run = logdir / "run"
    small = ["--base-channels", "8", "--channel-mults", "1,2"] if quick else []
    sampler_defaults = ["--sampler-samples", "2", "--sampler-steps", "2"] if quick else []  # else K = 8, N = 20

    def deepspeed(name: str) -> None:
        for stage in (2, 3):
            out = logdir / f"zero{stage}"
            common = [
                "--data",
                str(data),
                "--output-dir",
                str(out),
                "--batch-size",
                "4" if quick else "32",
                "--crop-size",
                crop,
                "--checkpointing-steps",
                "10",
                "--validation-steps",
                "0",
                "--log-steps",
                "5",
                *small,
            ]
            check.command(name, train_command(f"deepspeed_zero{stage}.yaml", *common, "--max-steps", "10"))
            output, _ = check.command(
                name,
                train_command(
                    f"deepspeed_zero{stage}.yaml", *common, "--max-steps", "20", "--resume-from-checkpoint", "latest"
                ),
            )
            if "at step 10" not in output:
                raise RuntimeError(f"ZeRO-{stage} did not resume from step 10")
            saved = json.loads((out / "config.json").read_text())
            from safetensors.torch import load_file

            weights = load_file(out / "model.safetensors")
            finite = all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in weights.values())
            speeds = [
                json.loads(line)["train/samples_per_s"]
                for line in (out / "logs" / "train.jsonl").read_text().splitlines()
            ]
            check.say(
                f"ZeRO-{stage} {saved['mixed_precision']}: step {saved['step']} after resume, fp32 finite weights: "
                f"{finite}, samples/s (last window) {speeds[-1]:.0f}"
            )
            if not finite or saved["mixed_precision"] != "bf16":
                raise RuntimeError(f"ZeRO-{stage}: weights finite {finite}, precision {saved['mixed_precision']}")

    def training(name: str) -> None:
        check.command(
            name,
            [
                sys.executable,
                str(ROOT / "scripts" / "benchmark_training.py"),
                "--data",
                str(data),
                "--device",
                args.device,
                "--batch-sizes",
                batches,
                "--crop-size",
                crop,
                "--steps",
                "4" if quick else "30",
                "--warmup",
                "2" if quick else "10",
            ],
        )

    def train_run(name: str) -> None:
        check.command(
            name,
            train_command(
                None,
                "--data",
                str(data),
                "--output-dir",
                str(run),
                "--max-steps",
                "20",
                "--batch-size",
                "8",
                "--crop-size",
                crop,
                "--checkpointing-steps",
                "20",
                "--validation-steps",
                "0",
                *small,
                *sampler_defaults,
            ),
        )

    def sampler(name: str) -> None:
        check.command(
            name,
            [
                sys.executable,
                str(ROOT / "scripts" / "benchmark_sampler.py"),
                "--model",
                str(run),
                "--device",
                args.device,
                "--size",
                str(image_size),
                "--samples",
                "2" if quick else "8",
                "--steps",
                "2" if quick else "20",
                "--skip-reference",
            ],
        )

    def predict(name: str) -> None:
        images = logdir / "images"
        rng = np.random.default_rng(0)
        (images / "folder").mkdir(parents=True, exist_ok=True)
        for i in range(folder_images):
            tifffile.imwrite(
                images / "folder" / f"img_{i:02d}.tif", (rng.random((image_size, image_size)) * 1000).astype(np.uint16)
            )
        tifffile.imwrite(images / "one.tif", (rng.random((image_size, image_size)) * 1000).astype(np.uint16))
        results = {}
        for label, source in (("one image", images / "one.tif"), (f"{folder_images} images", images / "folder")):
            for mode in ("off", "auto"):
                with tempfile.TemporaryDirectory() as cache:  # cold compile cache, as a first-time user
                    output = logdir / "predictions" / f"{label.replace(' ', '_')}_{mode}"
                    target = output / "one.tif" if source.suffix else output
                    _, seconds = check.command(
                        name,
                        [
                            sys.executable,
                            "-m",
                            "hazematching",
                            "predict",
                            "--model",
                            str(run),
                            "--input",
                            str(source),
                            "--output",
                            str(target),
                            "--overwrite",
                            "--compile",
                            mode,
                            "--device",
                            args.device,
                        ],
                        env={"TORCHINDUCTOR_CACHE_DIR": cache},
                    )
                results[(label, mode)] = seconds
                check.say(f"predict {label}, --compile {mode}: {seconds:.1f} s (process start included)")
            check.say(f"predict {label}: auto / off time = {results[(label, 'auto')] / results[(label, 'off')]:.2f}x")
        script = (
            "import time, numpy as np, torch\n"
            "from hazematching.run import load_model\nfrom hazematching.inference.predict import predict_array\n"
            f"run = load_model({str(run)!r}, device={args.device!r})\n"
            f"for size in ({image_size}, {image_size}, {2 * image_size}, {2 * image_size}, {3 * image_size // 2}):\n"
            "    image = np.random.default_rng(size).random((size, size)).astype(np.float32)\n"
            "    tic = time.perf_counter(); predict_array(run, image, compile='on', progress=False)\n"
            "    torch.cuda.synchronize() if torch.cuda.is_available() else None\n"
            "    print(f'compiled network, {size}^2 image: {time.perf_counter() - tic:.2f} s', flush=True)\n"
        )
        with tempfile.TemporaryDirectory() as cache:
            check.command(name, [sys.executable, "-c", script], env={"TORCHINDUCTOR_CACHE_DIR": cache})

    def package(name: str) -> None:
        with zipfile.ZipFile(args.package) as archive, tempfile.TemporaryDirectory() as tmp:
            archive.extractall(tmp)
            script = next(Path(tmp).glob("*torchscript*.pt"))
            test_input = np.load(next(Path(tmp).glob("test_input*.npy")))
            expected = np.load(next(Path(tmp).glob("test_output*.npy")))
            model = torch.jit.load(str(script), map_location=args.device).eval()
            with torch.no_grad():
                tic = time.perf_counter()
                out = model(torch.from_numpy(test_input).to(args.device)).float().cpu().numpy()
                seconds = time.perf_counter() - tic
            relative = float(np.abs(out - expected).max() / np.abs(expected).max())
            check.say(
                f"package {args.package.name} on {args.device}: max |out - test output| / max |test output| = "
                f"{relative:.2e} ({seconds:.2f} s for a {test_input.shape} input)"
            )
            if relative > 1e-3:
                raise RuntimeError(f"the package does not reproduce its test output on {args.device}: {relative:.2e}")

    check.row("1. DeepSpeed ZeRO-2/3 bf16 as shipped, with resume", 100, deepspeed)
    check.row("2. training samples/s", 300, training)
    check.row("3a. a short run for the sampler rows", 35, train_run, wanted=bool(check.rows & {"3", "4"}))
    if run.exists():
        check.row("3b. sampler table", 110, sampler)
        check.row("4. predict CLI: compile rule, folder of images, sizes", 200, predict)
    if args.package is not None:
        check.row("5. exported package on the device", 10, package)
    check.say(f"# gpu_check finished in {time.perf_counter() - check.start:.0f} s; logs in {logdir}")


if __name__ == "__main__":
    main()

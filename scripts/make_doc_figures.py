"""The guide's figures, made from a real run (the demo run of the Quickstart, trained longer):

    python scripts/make_doc_figures.py --run demo/run
    # after: hazematching evaluate --model demo/run --data demo/data/test
    #        hazematching calibrate --model demo/run --data demo/data/val

writes docs/images/training-samples.png (the last validation sample grid), training-loss.png (train
and validation loss from the run's logs), evaluation.png (the first evaluation figure) and
calibration.png (the calibration plot), downscaled so that the site stays small.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def copy_scaled(source: Path, target: Path, width: int = 1200) -> None:
    image = Image.open(source)
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.save(target, optimize=True)
    print(f"wrote {target} from {source}")


def loss_plot(run: Path, target: Path) -> None:
    def read(name: str, key: str) -> tuple[list[int], list[float]]:
        rows = [json.loads(line) for line in (run / "logs" / name).read_text().splitlines() if line.strip()]
        rows = [r for r in rows if key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    ax.plot(*read("train.jsonl", "train/loss"), lw=0.8, alpha=0.6, label="training loss (per log window)")
    steps, values = read("validation.jsonl", "val_loss")
    ax.plot(steps, values, "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title(f"{run}: loss against training steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(target)
    print(f"wrote {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a trained, evaluated and calibrated run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the figures")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    grids = sorted((args.run / "samples").glob("step-*.png"))
    if not grids:
        raise SystemExit(f"{args.run}/samples: no sample grids (train with --validation-steps > 0)")
    copy_scaled(grids[-1], args.out / "training-samples.png")
    loss_plot(args.run, args.out / "training-loss.png")
    figures = sorted((args.run / "evaluation" / "figures").glob("*.png"))
    if not figures:
        raise SystemExit(f"{args.run}/evaluation: no figures; run `hazematching evaluate` first")
    copy_scaled(figures[0], args.out / "evaluation.png")
    if not (args.run / "calibration.png").is_file():
        raise SystemExit(f"{args.run}: no calibration.png; run `hazematching calibrate` first")
    copy_scaled(args.run / "calibration.png", args.out / "calibration.png", width=900)


if __name__ == "__main__":
    main()

"""The ``hazematching`` console command."""

import argparse
import sys
from pathlib import Path


def _simulate(args) -> None:
    from .data.simulate import simulate_dataset

    try:
        counts = simulate_dataset(Path(args.out), args.num_images, args.size, args.seed, depth=args.depth)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    print(f"wrote {sum(counts.values())} pairs to {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")


def _predict(args) -> None:
    from .data.io import DataError
    from .predict import predict_files
    from .run import RunError

    try:
        written = predict_files(
            Path(args.model), Path(args.input), Path(args.output), device=args.device,
            samples=args.samples, steps=args.steps, seed=args.seed, tile_size=args.tile_size,
            overlap=args.overlap, batch_size=args.batch_size, keep_samples=args.save_samples,
            calibrated=args.calibrated,
        )
    except (DataError, RunError, RuntimeError) as exc:
        sys.exit(f"error: {exc}")
    print(f"wrote {len(written)} file(s): {', '.join(str(p) for p in written[:6])}{' ...' if len(written) > 6 else ''}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hazematching", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="write simulated widefield/confocal pairs (microsim)",
        description="Simulate paired widefield/confocal images: OUT/{train,val,test}/*.tif, channel 0 = "
        "confocal target, channel 1 = widefield input.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sim.add_argument("--out", required=True, help="output folder")
    sim.add_argument("--num-images", type=int, default=24, help="pairs in total (70/15/15 train/val/test)")
    sim.add_argument("--size", type=int, default=256, help="image height and width in pixels")
    sim.add_argument("--seed", type=int, default=0, help="the same seed gives the same data set")
    sim.add_argument("--depth", type=int, default=32, help="z planes of the 3D ground truth (more = more haze)")
    sim.set_defaults(func=_simulate)

    pred = sub.add_parser(
        "predict",
        help="dehaze TIFFs with a trained run (MMSE, std, samples)",
        description="Dehaze a 2D TIFF or a folder of them. Writes float32 TIFFs: NAME.tif (MMSE), NAME_std.tif "
        "(per-pixel std over samples) and with --save-samples NAME_samples.tif.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pred.add_argument("--model", required=True, help="run directory (model.safetensors + config.json)")
    pred.add_argument("--input", required=True, help="TIFF file or folder of TIFFs")
    pred.add_argument("--output", required=True, help="output .tif (for one input) or folder")
    pred.add_argument("--samples", type=int, default=None, help="posterior samples K (default: the run's)")
    pred.add_argument("--steps", type=int, default=None, help="Euler steps N (default: the run's)")
    pred.add_argument("--seed", type=int, default=None, help="noise seed (default: the run's)")
    pred.add_argument("--tile-size", type=int, default=256, help="tile edge in pixels (memory ~ tile^2 x batch)")
    pred.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles in pixels")
    pred.add_argument("--batch-size", type=int, default=4, help="tiles per network call")
    pred.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pred.add_argument("--save-samples", action="store_true", help="also write all samples")
    pred.add_argument("--calibrated", action="store_true", help="write the calibrated std a*std+b (see calibrate)")
    pred.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

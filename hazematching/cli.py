"""Dehaze widefield fluorescence images with a trained HazeMatching run.

Training is trainer/train.py (accelerate). This command covers the rest of the journey: simulate
demo pairs, predict (dehaze TIFF/OME-Zarr images, stacks and folders), evaluate against confocal
targets, calibrate the uncertainty, tune the sampler for speed, and export a bioimage.io package.
K is the number of samples averaged into the MMSE (--samples), N the number of ODE solver steps per
sample (--steps)."""

import argparse
import sys
import warnings
from pathlib import Path

from hazematching.core.sampler import SOLVERS
from hazematching.core.tiles import OVERLAP, TILE_SIZE
from hazematching.settings import DEFAULT_NOISE, MS3IM_TOLERANCE, NOISE_KEYING, PSNR_TOLERANCE


def _simulate(args) -> None:
    from hazematching.data.simulate import simulate_dataset

    counts = simulate_dataset(Path(args.out), args.num_images, args.size, args.seed, depth=args.depth)
    print(f"wrote {sum(counts.values())} pairs to {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")


def _predict(args) -> None:
    from hazematching.inference.experiment import predict_experiment, summary_lines

    result = predict_experiment(
        Path(args.model),
        Path(args.input),
        Path(args.output),
        device=args.device,
        channel=args.channel,
        axes=args.axes,
        overwrite=args.overwrite,
        recursive=args.recursive,
        keep_samples=args.save_samples,
        calibrated=args.calibrated,
        progress=not args.quiet,
        noise=args.noise,
        **_sampler_options(args),
    )
    if "complete" not in result:  # not the main process: the main one reports
        return
    print("\n".join(summary_lines(result)))
    if result["failed"]:
        sys.exit(1)


def _sampler_options(args) -> dict:
    return dict(
        samples=args.samples,
        steps=args.steps,
        seed=args.seed,
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        solver=args.solver,
        sample_batch=args.sample_batch,
        compile=args.compile,
        precision=args.precision,
    )


def _evaluate(args) -> None:
    from hazematching.evaluation.evaluate import evaluate, markdown_table

    output = Path(args.output) if args.output else Path(args.model) / "evaluation"
    result = evaluate(
        Path(args.model),
        Path(args.data),
        output,
        baseline_dir=args.baseline and Path(args.baseline),
        metric_samples=args.metric_samples,
        device=args.device,
        lpips_backbone=args.lpips_backbone,
        lpips_linear=args.lpips_linear,
        fid_backbone=args.fid_backbone,
        **_sampler_options(args),
    )
    print(markdown_table(result["mean"], result["not_computed"]), end="")
    print(f"wrote {output}/metrics.json, metrics.md and figures/")


def _calibrate(args) -> None:
    from hazematching.evaluation.evaluate import calibrate

    result = calibrate(
        Path(args.model),
        Path(args.data),
        eval_dir=args.eval_data and Path(args.eval_data),
        bins=args.bins,
        device=args.device,
        **_sampler_options(args),
    )
    print(f"calibrated std = {result['scale']:.4g} * std + {result['offset']:.4g} (stored in {args.model}/config.json)")
    print(
        f"|RMSE - RMV| on {result['plot_data']}: {result['mean_abs_deviation_before']:.4g} before, "
        f"{result['mean_abs_deviation_after']:.4g} after; plot: {args.model}/calibration.png"
    )


def _tune(args) -> None:
    from hazematching.evaluation.tune import markdown, parse_grid, tune

    samples = tuple(int(k) for k in args.samples.split(",")) if args.samples else None
    grid = parse_grid(args.settings) if args.settings else None
    rows, chosen = tune(
        Path(args.model),
        Path(args.data),
        samples,
        grid,
        args.seed,
        args.device,
        store=not args.dry_run,
        psnr_tolerance=args.psnr_tolerance,
        ms3im_tolerance=args.ms3im_tolerance,
    )
    solver, steps = chosen.reference_steps()
    print(
        markdown(
            rows,
            next(r for r in rows if (r.samples, r.solver, r.steps) == (chosen.samples, chosen.solver, chosen.steps)),
            (solver, steps),
        )
    )
    where = "not stored (--dry-run)" if args.dry_run else f"stored in {args.model}/config.json"
    print(
        f"\nrecommended at K = {chosen.samples}: --solver {chosen.solver} --steps {chosen.steps} "
        f"({chosen.speedup:.1f}x fewer network evaluations than {solver.capitalize()}-{steps}, "
        f"{chosen.psnr_delta:+.2f} dB PSNR, "
        f"{chosen.structure_text()}); {where}; table: {args.model}/tuning/tune.md"
    )


def _export(args) -> None:
    from hazematching.export import export_model

    path = export_model(
        Path(args.model),
        Path(args.output),
        samples=args.samples,
        steps=args.steps,
        seed=args.seed,
        solver=args.solver,
        tile_size=args.tile_size,
        overlap=args.overlap,
        name=args.name,
        authors=args.authors,
        maintainers=args.maintainers,
        license=args.license,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        test_image=args.test_image and Path(args.test_image),
        test_size=args.test_size,
        evaluation=args.evaluation and Path(args.evaluation),
    )
    print(f"wrote {path}; check it with: bioimageio test {path}")
    if not args.maintainers:
        print("note: no --maintainers given; uploading to bioimage.io needs at least one maintainer's GitHub user name")


def _reference_list(args) -> None:
    from hazematching.paper.releases import summary_lines

    print("\n".join(summary_lines()))


def _reference_import(args) -> None:
    from hazematching.paper.importer import import_checkpoint, statistics_from_flags

    description = import_checkpoint(
        Path(args.checkpoint),
        Path(args.output),
        dataset=args.dataset,
        source_channel=args.source_channel,
        normalization=statistics_from_flags(args.input_mean, args.input_std, args.target_mean, args.target_std),
        patch_size=args.patch_size,
    )
    _imported(description, args.output)


def _imported(description, output) -> None:
    source = description.imported
    if source.verified:
        what = f"the released {source.release} checkpoint"
    else:
        what = f"the checkpoint (as trained on {source.release})" if source.release else "the checkpoint"
    print(
        f"imported {what} into {output} (tiles of {description.sampler.tile_size} px, Euler, "
        f"{description.sampler.steps} steps); dehaze with: hazematching predict --model {output} --input IMAGES "
        "--output OUT"
    )


def _reference_download(args) -> None:
    from hazematching.paper.download import download_checkpoint, download_dataset
    from hazematching.paper.importer import import_checkpoint

    cache = Path(args.cache) if args.cache else None
    checkpoint = download_checkpoint(args.dataset, cache, progress=not args.quiet)
    print(f"checkpoint: {checkpoint} (sha256 verified)")
    if args.data:
        folder = download_dataset(args.dataset, Path(args.data), cache, progress=not args.quiet)
        print(f"data: {folder} (train/, val/, test/; channel 0 confocal, channel 1 widefield)")
    if args.output:
        description = import_checkpoint(
            checkpoint, Path(args.output), dataset=args.dataset, source_channel=args.source_channel
        )
        _imported(description, args.output)


def _add_reference_parser(sub) -> None:
    from hazematching.paper.releases import NAMES

    ref = sub.add_parser(
        "reference",
        help="the paper's five released models and data sets: list, download, import as runs",
        description="The HazeMatching paper's released checkpoints (one per data set: "
        f"{', '.join(NAMES)}) and paired data, usable as runs of this project: predict, tune, calibrate, "
        "export and fine-tune them (docs: The paper's models).",
        formatter_class=HelpFormatter,
    )
    actions = ref.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list", help="the released data sets and their networks", formatter_class=HelpFormatter
    )
    listing.set_defaults(func=_reference_list)

    channel_help = "zebrafish only: the statistics of source channel ch0, ch1 or ch2 (the token in its file names)"
    imp = actions.add_parser(
        "import",
        help="turn a released best_model.pth into a run folder",
        description="Write a run folder (model.safetensors + config.json) for a checkpoint of the paper's "
        "network. A released file is recognised by its sha256; it is loaded without running code "
        "(weights_only) and checked key by key before anything is written.",
        formatter_class=HelpFormatter,
    )
    imp.add_argument("checkpoint", help="the .pth file (torch.save of the network's state dict)")
    imp.add_argument("--output", required=True, help="new run folder")
    imp.add_argument(
        "--dataset",
        choices=NAMES,
        default=None,
        help="the data set it was trained on (default: recognised from the file; needed for other files)",
    )
    imp.add_argument("--source-channel", choices=("ch0", "ch1", "ch2"), default=None, help=channel_help)
    for flag, what in (
        ("--input-mean", "widefield mean"),
        ("--input-std", "widefield std"),
        ("--target-mean", "confocal mean"),
        ("--target-std", "confocal std"),
    ):
        imp.add_argument(flag, type=float, default=None, help=f"a checkpoint of no release: its training {what}")
    imp.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="a checkpoint of no release: the crop size P it was trained on (default: 16 x its attention factor)",
    )
    imp.set_defaults(func=_reference_import)

    down = actions.add_parser(
        "download",
        help="download a released checkpoint (and data), verified by sha256, and import it",
        description="Download a released checkpoint into the cache (resumable; sha256-checked), optionally its "
        "paired data unpacked as train/, val/, test/, and import the checkpoint as a run. "
        "HAZEMATCHING_RELEASE_URL points at a mirror.",
        formatter_class=HelpFormatter,
    )
    down.add_argument("--dataset", required=True, choices=NAMES, help="which release")
    down.add_argument("--output", default=None, help="import the checkpoint as this run folder")
    down.add_argument("--data", default=None, help="also download the paired data and unpack it into this folder")
    down.add_argument(
        "--cache",
        default=None,
        help="download cache (default: $HAZEMATCHING_CACHE, else the user cache folder, ~/.cache/hazematching)",
    )
    down.add_argument("--source-channel", choices=("ch0", "ch1", "ch2"), default=None, help=channel_help)
    down.add_argument("--quiet", action="store_true", help="no progress bars")
    down.set_defaults(func=_reference_download)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default once: from the help text when it names it (e.g. "the run's"), else the
    value argparse has, and nothing for flags without a default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _add_settings_flags(parser, where: str = "") -> None:
    """The flags that change the numbers (K, N, solver, seed, tiling); ``where`` qualifies them for export."""
    parser.add_argument(
        "--samples", type=int, default=None, help=f"samples K averaged into the MMSE{where} (default: the run's)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"steps N of the ODE solver per sample{where} (default: the run's tuned setting, else the run's)",
    )
    parser.add_argument(
        "--solver",
        choices=SOLVERS,
        default=None,
        help=f"ODE solver{where}; midpoint/heun use 2 network calls per step, shortcut needs a run trained with "
        "--shortcut-fraction (default: the run's tuned setting, else the run's)",
    )
    parser.add_argument("--seed", type=int, default=None, help=f"noise seed{where} (default: the run's)")
    parser.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help=f"larger images are processed in overlapping tiles of this edge in pixels{where} (memory ~ tile^2 x "
        f"batch; default: {TILE_SIZE})",
    )
    parser.add_argument(
        "--overlap", type=int, default=None, help=f"overlap of neighbouring tiles in pixels (default: {OVERLAP})"
    )


def _add_device_flag(parser) -> None:
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the network runs; auto: the GPU when there is one (default: auto)",
    )


def _add_sampler_flags(parser) -> None:
    _add_settings_flags(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="tiles per network call (default: 1 on CPU, 8 on a GPU, 16 on one with >= 40 GiB)",
    )
    parser.add_argument(
        "--sample-batch",
        type=int,
        default=None,
        help="samples per network call (default: 1 on CPU; on GPU enough for ~32 images per call)",
    )
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile the network (auto: when the job is large enough to pay the compile time back: "
        "on a GPU from ~6 images of 1024^2 at K = 8, N = 20, on a CPU from ~3000 network calls)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="network precision (auto: bf16 autocast on GPUs that support it, else fp32)",
    )
    _add_device_flag(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hazematching", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help='write simulated widefield/confocal pairs (microsim; pip install "hazematching[simulate]")',
        description="Simulate paired widefield/confocal images: OUT/{train,val,test}/*.tif, channel 0 = "
        "confocal target, channel 1 = widefield input.",
        formatter_class=HelpFormatter,
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
        description="Dehaze a TIFF or a folder of TIFFs: 2D images, z-stacks, time-lapses (ImageJ hyperstacks, "
        "OME-TIFF), plane by plane. Writes float32 TIFFs with the input's axes and pixel sizes: NAME.tif (MMSE), "
        "NAME_std.tif (per-pixel std over samples) and with --save-samples NAME_samples.tif, plus "
        "hazematching_manifest.json. Interrupted runs continue where they stopped when relaunched. On several "
        "processes/GPUs/nodes: accelerate launch [--config_file ...] -m hazematching predict --model ... ",
        formatter_class=HelpFormatter,
    )
    pred.add_argument("--model", required=True, help="run directory (model.safetensors + config.json)")
    pred.add_argument("--input", required=True, help="TIFF file or folder of TIFFs (2D or N-D)")
    pred.add_argument("--output", required=True, help="output .tif (for one input) or folder")
    _add_sampler_flags(pred)
    pred.add_argument(
        "--channel",
        type=int,
        default=None,
        help="channel to dehaze in multi-channel TIFFs (C axis), counted from 0 (Fiji counts from 1: its channel 2 "
        "is --channel 1), e.g. 1 for the widefield channel of paired files",
    )
    pred.add_argument(
        "--axes",
        default=None,
        help="axes of files that do not record them, letters of TZCYX ending in YX, e.g. TZYX; for a plain "
        "multi-page TIFF the sizes of the leading axes may follow their letters, e.g. Z3C2YX (pages z0c0, z0c1, "
        "z1c0, ...); size-1 axes may be left out",
    )
    pred.add_argument(
        "--overwrite", action="store_true", help="recompute outputs that are complete, or were made with other settings"
    )
    pred.add_argument(
        "--recursive",
        action="store_true",
        help="also dehaze the TIFFs in sub-folders of --input; the output mirrors the folder tree",
    )
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    pred.add_argument("--save-samples", action="store_true", help="also write all samples")
    pred.add_argument("--calibrated", action="store_true", help="write the calibrated std a*std+b (see calibrate)")
    pred.add_argument(
        "--noise",
        choices=list(NOISE_KEYING),
        default=DEFAULT_NOISE,
        help="; ".join(f"{k}: {v}" for k, v in NOISE_KEYING.items()),
    )
    pred.set_defaults(func=_predict)

    ev = sub.add_parser(
        "evaluate",
        help="metrics of a run (and a baseline) on paired test data, with figures",
        description="Compare the widefield input, an optional U-Net baseline, the HazeMatching MMSE and single "
        "samples with the confocal targets (range-invariant PSNR, MS-SSIM, MicroMS3IM, FSIM, GMSD; LPIPS and FID "
        "with local backbones).",
        formatter_class=HelpFormatter,
    )
    ev.add_argument("--model", required=True, help="HazeMatching run directory")
    ev.add_argument("--data", required=True, help="paired split folder, e.g. DATA/test")
    ev.add_argument(
        "--output",
        default=None,
        help="folder for metrics.json, metrics.md, figures/ (default: MODEL/evaluation, where export looks for it)",
    )
    ev.add_argument("--baseline", default=None, help="U-Net baseline run directory (trained with --objective mse)")
    ev.add_argument(
        "--metric-samples", type=int, default=4, help="samples whose metrics are averaged for the sample row"
    )
    ev.add_argument("--lpips-backbone", default=None, help="TorchScript file: images in [-1,1] -> list of feature maps")
    ev.add_argument("--lpips-linear", default=None, help="safetensors file with LPIPS weights lin0, lin1, ...")
    ev.add_argument("--fid-backbone", default=None, help="TorchScript file: images in [0,1] -> (N, D) features")
    _add_sampler_flags(ev)
    ev.set_defaults(func=_evaluate)

    cal = sub.add_parser(
        "calibrate",
        help="fit the std calibration a*std+b on validation data and store it in the run",
        description="Bin pixels by predicted std, compare the RMSE (root mean squared error) with the RMV (root "
        "mean variance, i.e. the predicted std) per bin, fit RMSE = a*RMV + b on --data and plot both curves on a "
        "held-out split. The fit holds for the K, N and solver it was made with: predict --calibrated warns when "
        "they differ.",
        formatter_class=HelpFormatter,
    )
    cal.add_argument("--model", required=True, help="HazeMatching run directory (config.json is updated)")
    cal.add_argument("--data", required=True, help="paired validation folder, e.g. DATA/val")
    cal.add_argument(
        "--eval-data",
        default=None,
        help="held-out paired folder for the plot (default: DATA/../test when it exists, else --data)",
    )
    cal.add_argument("--bins", type=int, default=15, help="number of std bins of the RMSE/RMV curves")
    _add_sampler_flags(cal)
    cal.set_defaults(func=_calibrate)

    tun = sub.add_parser(
        "tune",
        help="measure quality against speed for Euler/midpoint/Heun and store the fastest good setting in the run",
        description="On held-out pairs, measure MMSE PSNR and MicroMS3IM, one sample's PSNR and the calibration "
        "slope for each solver and step count (and each K), print the table, and store the setting with the fewest "
        f"network evaluations within {PSNR_TOLERANCE} dB PSNR and {MS3IM_TOLERANCE} MicroMS3IM of Euler with 20 steps "
        "(a run trained on a time "
        "grid of G points: Euler with G - 1 steps, the grid's) at the run's K. predict, "
        "experiments and export then use it unless --solver or --steps is given.",
        formatter_class=HelpFormatter,
    )
    tun.add_argument("--model", required=True, help="HazeMatching run directory (config.json is updated)")
    tun.add_argument("--data", required=True, help="paired held-out folder, e.g. DATA/val")
    tun.add_argument("--samples", default=None, help="comma-separated K values (default: the run's K)")
    tun.add_argument(
        "--settings",
        default=None,
        help="comma-separated SOLVER:STEPS (default: 13 settings, plus shortcut:4,2,1 for a run trained with "
        "--shortcut-fraction)",
    )
    tun.add_argument("--seed", type=int, default=0, help="noise seed of every row")
    tun.add_argument(
        "--psnr-tolerance",
        type=float,
        default=PSNR_TOLERANCE,
        help="dB of MMSE PSNR the recommended setting may lose against Euler-20 (raise it to trade quality for speed)",
    )
    tun.add_argument(
        "--ms3im-tolerance",
        type=float,
        default=MS3IM_TOLERANCE,
        help="MicroMS3IM the recommended setting may lose against Euler-20",
    )
    _add_device_flag(tun)
    tun.add_argument("--dry-run", action="store_true", help="print and write the table, keep config.json as it is")
    tun.set_defaults(func=_tune)

    exp = sub.add_parser(
        "export",
        help="pack a run as a bioimage.io model (.zip) for bioimageio.core, ilastik and deepImageJ",
        description="Export a HazeMatching run as a bioimage.io model package whose single call runs the whole "
        "sampler (K samples x N steps of the ODE solver) and returns [mean, std] as two channels of one output. "
        "The settings are fixed inside the package; its README includes MODEL/evaluation/metrics.json (written by "
        "`hazematching evaluate`) when it exists.",
        formatter_class=HelpFormatter,
    )
    exp.add_argument("--model", required=True, help="HazeMatching run directory")
    exp.add_argument("--output", required=True, help="package path, e.g. model.zip")
    _add_settings_flags(exp, " inside the package")
    exp.add_argument(
        "--evaluation",
        default=None,
        help="folder with the metrics.json of `hazematching evaluate` for the package's README (default: "
        "MODEL/evaluation, where evaluate writes)",
    )
    exp.add_argument("--name", default="HazeMatching widefield dehazing", help="model name (5-128 characters)")
    exp.add_argument(
        "--authors",
        nargs="+",
        default=None,
        help="author names (default: HazeMatching contributors; the paper's authors for their released checkpoints)",
    )
    exp.add_argument("--maintainers", nargs="+", default=None, help="maintainers' GitHub user names")
    exp.add_argument(
        "--license",
        default=None,
        help="SPDX license id of the weights (default: BSD-3-Clause; MIT for the paper's released checkpoints)",
    )
    exp.add_argument("--formats", default="torchscript,pytorch_state_dict", help="weight formats, comma separated")
    exp.add_argument(
        "--test-image", default=None, help="2D TIFF for the test tensors (default: the run's first validation image)"
    )
    exp.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="edge of the square test tensor crop (default: 256, or less when the test image is smaller)",
    )
    exp.set_defaults(func=_export)
    _add_reference_parser(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on every (sub)command: a traceback instead of the one-line error."""
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_debug_flag(sub)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _stop(message: str, status: int) -> None:
    """Exit with ``status``; the message goes to stderr and stays readable as the SystemExit's text."""
    stop = SystemExit(message)
    if status != 1:  # a non-1 status needs an int code, so the message is printed here
        print(message, file=sys.stderr)
        stop.code = status
    raise stop


def run_command(args) -> None:
    """The one error policy of every subcommand: an invalid value exits 2 (as argparse does), any other
    expected error (bad input, a missing file, no GPU, a failed download) exits 1, each with one line
    naming the cause; an unexpected one says how to get its traceback. ``--debug`` re-raises."""
    from hazematching.settings import SettingError

    try:
        args.func(args)
    except KeyboardInterrupt:
        _stop("interrupted", 130)
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        if isinstance(exc, SettingError):
            _stop(f"error: {_one_line(exc)}", 2)
        if isinstance(exc, (ValueError, RuntimeError, OSError, ImportError)):
            _stop(f"error: {_one_line(exc)}", 1)
        _stop(
            f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (run the command again with --debug for the "
            "traceback, and please report it)",
            1,
        )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    _add_debug_flag(parser)
    args = parser.parse_args(argv)
    shown, warnings.formatwarning = warnings.formatwarning, _one_line_warning  # the message, not our line
    try:
        run_command(args)
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    main()

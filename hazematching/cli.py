"""Dehaze widefield fluorescence images with a trained HazeMatching run.

Training is trainer/train.py (accelerate). This command covers the rest of the journey: simulate
demo pairs, predict (dehaze TIFF/OME-Zarr images, stacks and folders), evaluate against confocal
targets, calibrate the uncertainty, tune the sampler for speed, and export a bioimage.io package.
K is the number of posterior samples (--samples; their std, and their mean unless --mmse anchor), N
the number of ODE solver steps per sample (--steps)."""

import argparse
import sys
import warnings
from pathlib import Path

from hazematching import commands
from hazematching.paper.releases import NAMES
from hazematching.settings import MS3IM_TOLERANCE, PSNR_TOLERANCE, SAMPLE_TOLERANCE, SettingsRequest, SpeedOptions


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
    """The settings and speed flags (``device`` aside) as keyword arguments."""
    names = [*SettingsRequest.model_fields, *(name for name in SpeedOptions.model_fields if name != "device")]
    return {name: getattr(args, name) for name in names}


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
    print(
        f"calibrated std = max({result['scale']:.4g} * std {'-' if result['offset'] < 0 else '+'} "
        f"{abs(result['offset']):.4g}, 0) (stored in {args.model}/config.json)"
    )
    print(
        f"|RMSE - RMV| on {result['plot_data']}: {result['mean_abs_deviation_before']:.4g} before, "
        f"{result['mean_abs_deviation_after']:.4g} after; plot: {args.model}/calibration.png"
    )


def _tune(args) -> None:
    from hazematching.evaluation.tune import markdown, mmse_markdown, parse_grid, tune

    samples = tuple(int(k) for k in args.samples.split(",")) if args.samples else None
    grid = parse_grid(args.settings) if args.settings else None
    rows, chosen, anchor = tune(
        Path(args.model),
        Path(args.data),
        samples,
        grid,
        args.seed,
        args.device,
        store=not args.dry_run,
        psnr_tolerance=args.psnr_tolerance,
        ms3im_tolerance=args.ms3im_tolerance,
        sample_tolerance=args.sample_tolerance,
    )
    solver, steps = chosen.reference_steps()
    best = next(r for r in rows if (r.samples, r.solver, r.steps) == (chosen.samples, chosen.solver, chosen.steps))
    reference = next(r for r in rows if (r.samples, r.solver, r.steps) == (chosen.samples, solver, steps))
    print(markdown(rows, best, (solver, steps)) + "\n\n" + mmse_markdown(anchor, reference, chosen.mmse))
    where = (
        "not stored (--dry-run): config.json is unchanged"
        if args.dry_run
        else f"stored in {args.model}/config.json: predict, experiments, evaluate, calibrate and export use them "
        "unless --mmse, --solver or --steps is given"
    )
    table = Path(args.model) / "tuning" / ("dry-run" if args.dry_run else "") / "tune.md"
    print(
        f"\nsamples (the std and the posterior draws), at K = {chosen.samples}: --solver {chosen.solver} --steps "
        f"{chosen.steps} ({chosen.speedup:.1f}x fewer network evaluations than {solver.capitalize()}-{steps}; "
        f"their mean {chosen.psnr_delta:+.2f} dB PSNR, {chosen.structure_text()})"
    )
    print(
        f"MMSE: --mmse {chosen.mmse} (the anchor v(0, 0, c), one network evaluation, is {chosen.mmse_psnr_delta:+.2f} "
        f"dB PSNR and {chosen.mmse_absolute_psnr_delta:+.2f} dB absolute PSNR from the mean of {chosen.samples} "
        f"{solver.capitalize()}-{steps} samples; it is recommended when neither is more than {args.psnr_tolerance} dB "
        "below)"
    )
    print(f"both {where}; table: {table}")


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
        mmse=args.mmse,
        sample_noise=args.sample_noise,
        name=args.name,
        authors=args.authors,
        maintainers=args.maintainers,
        license=args.license,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        test_image=args.test_image and Path(args.test_image),
        test_channel=args.test_channel,
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
    ref = sub.add_parser(
        "reference",
        help="the paper's five released models and data sets: list, download, import as runs",
        description="The HazeMatching paper's released checkpoints (one per data set: "
        f"{', '.join(NAMES)}) and paired data, usable as runs of this project: predict, tune, calibrate, "
        "export and fine-tune them (docs: The paper's models).",
        formatter_class=HelpFormatter,
    )
    actions = ref.add_subparsers(dest="action", required=True)
    _add_command(
        actions, "reference list", _reference_list, help="the released data sets and their networks", description=None
    )
    _add_command(
        actions,
        "reference import",
        _reference_import,
        help="turn a released best_model.pth into a run folder",
        description="Write a run folder (model.safetensors + config.json) for a checkpoint of the paper's "
        "network. A released file is recognised by its sha256; it is loaded without running code "
        "(weights_only) and checked key by key before anything is written.",
    )
    _add_command(
        actions,
        "reference download",
        _reference_download,
        help="download a released checkpoint (and data), verified by sha256, and import it",
        description="Download a released checkpoint into the cache (resumable; sha256-checked), optionally its "
        "paired data unpacked as train/, val/, test/, and import the checkpoint as a run. "
        "HAZEMATCHING_RELEASE_URL points at a mirror.",
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default once: from the help text when it names it (e.g. "the run's"), else the
    value argparse has, and nothing for flags without a default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _add_command(sub, words: str, func, help: str, description: str | None):
    """The subparser of ``hazematching WORDS``, its flags generated from ``commands.COMMANDS[words]``."""
    keywords = {} if description is None else {"description": description}
    parser = sub.add_parser(words.split()[-1], help=help, formatter_class=HelpFormatter, **keywords)
    commands.add_flags(parser, commands.COMMANDS[words])
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hazematching", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_command(
        sub,
        "simulate",
        _simulate,
        help='write simulated widefield/confocal pairs (microsim; pip install "hazematching[simulate]")',
        description="Simulate paired widefield/confocal images: OUT/{train,val,test}/*.tif, channel 0 = "
        "confocal target, channel 1 = widefield input.",
    )
    _add_command(
        sub,
        "predict",
        _predict,
        help="dehaze TIFFs with a trained run (MMSE, std, samples)",
        description="Dehaze a TIFF or a folder of TIFFs: 2D images, z-stacks, time-lapses (ImageJ hyperstacks, "
        "OME-TIFF), plane by plane. Writes float32 TIFFs with the input's axes and pixel sizes: NAME.tif (MMSE), "
        "NAME_std.tif (per-pixel std over samples) and with --save-samples NAME_samples.tif, plus "
        "hazematching_manifest.json. Interrupted runs continue where they stopped when relaunched. On several "
        "processes/GPUs/nodes: accelerate launch [--config_file ...] -m hazematching predict --model ... ",
    )
    _add_command(
        sub,
        "evaluate",
        _evaluate,
        help="metrics of a run (and a baseline) on paired test data, with figures",
        description="Compare the widefield input, an optional U-Net baseline, the HazeMatching MMSE and single "
        "samples with the confocal targets (range-invariant PSNR, MS-SSIM, MicroMS3IM, FSIM, GMSD; LPIPS and FID "
        "with local backbones).",
    )
    _add_command(
        sub,
        "calibrate",
        _calibrate,
        help="fit the std calibration a*std+b on validation data and store it in the run",
        description="Bin pixels by predicted std, compare the RMSE (root mean squared error) with the RMV (root "
        "mean variance, i.e. the predicted std) per bin, fit RMSE = a*RMV + b on --data and plot both curves on a "
        "held-out split. The fit holds for the K, N, solver and sample noise it was made with: predict --calibrated "
        "warns when they differ.",
    )
    _add_command(
        sub,
        "tune",
        _tune,
        help="measure quality against speed for Euler/midpoint/Heun and store the fastest good setting in the run",
        description="On held-out pairs, measure MMSE PSNR and MicroMS3IM, one sample's PSNR, FSIM and GMSD and the "
        "calibration slope for each solver and step count (and each K), and the anchor MMSE v(0, 0, c); print the "
        "table, and store two recommendations: --mmse anchor when neither the anchor's PSNR nor its absolute PSNR "
        f"is more than {PSNR_TOLERANCE} dB below the samples' mean's, and the samples' setting with the fewest "
        f"network evaluations whose one sample is within {SAMPLE_TOLERANCE} FSIM and GMSD of Euler with 20 steps "
        "(a run trained on a time grid of G points: Euler with G - 1 steps, the grid's) at the run's K and whose "
        f"samples' mean is within {PSNR_TOLERANCE} dB PSNR and {MS3IM_TOLERANCE} MicroMS3IM of it. "
        "predict, experiments, evaluate, calibrate and export then use them unless --mmse, --solver or --steps "
        "is given.",
    )
    _add_command(
        sub,
        "export",
        _export,
        help="pack a run as a bioimage.io model (.zip) for bioimageio.core, ilastik and deepImageJ",
        description="Export a HazeMatching run as a bioimage.io model package whose single call runs the whole "
        "sampler (K samples x N steps of the ODE solver) and returns [mean, std] as two channels of one output. "
        "The settings are fixed inside the package; its README includes MODEL/evaluation/metrics.json (written by "
        "`hazematching evaluate`) when it exists.",
    )
    _add_reference_parser(sub)
    _add_debug_flag(parser)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """The message on a line of its own, also while a progress bar is drawn (its line has no end yet;
    the bar is drawn again below at its next update)."""
    from tqdm.std import tqdm

    fresh_line = "\n" if any(not bar.disable for bar in list(tqdm._instances)) else ""
    return f"{fresh_line}warning: {message}\n"


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """``--debug`` on every (sub)command: a traceback instead of the one-line error. A subcommand's
    flag has no default, so ``hazematching --debug predict ...`` keeps the top-level one."""
    default = False if top else argparse.SUPPRESS
    parser.add_argument("--debug", action="store_true", default=default, help="on an error, show the Python traceback")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_debug_flag(sub, top=False)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    joined = ""
    for line in lines:  # a line ending in ':' introduces the next one
        joined += line if not joined else (" " if joined.endswith(":") else "; ") + line
    return joined or type(exc).__name__


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
        commands.options_of(args)  # every value valid for its typed field before any work
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
    args = build_parser().parse_args(argv)
    shown, warnings.formatwarning = warnings.formatwarning, _one_line_warning  # the message, not our line
    try:
        run_command(args)
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    main()

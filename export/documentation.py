"""The package's README (from rdf/model_README.md), its authors and licence."""

import importlib.resources
import json
from pathlib import Path

from hazematching.commands import DEFAULT_LICENSE, PAPER_WEIGHTS_LICENSE
from hazematching.core import Dehazer
from hazematching.inference import input_range
from hazematching.run import RunDescription
from hazematching.settings import InferenceSettings

from .geometry import Geometry

TEMPLATE = importlib.resources.files("hazematching.rdf") / "model_README.md"
PAPER_AUTHORS = ["Anirban Ray", "Ashesh", "Florian Jug"]


def write_documentation(
    tmp: Path,
    evaluation: Path,
    config: RunDescription,
    model: Dehazer,
    settings: InferenceSettings,
    geometry: Geometry,
    name: str,
) -> None:
    calibration = config.calibration
    (tmp / "README.md").write_text(
        TEMPLATE.read_text().format(
            name=name,
            samples=settings.samples,
            steps=settings.steps,
            seed=settings.seed,
            solver=settings.solver.capitalize(),
            mmse_detail=mmse_detail(config, settings),
            pairs_note=(
                " The samples come in antithetic pairs: samples 2j and 2j + 1 start from the noise of pair index j "
                "and its negation (with an odd K the last sample is unpaired)."
                if settings.sample_noise == "antithetic"
                else ""
            ),
            tile_size=model.tile_size,
            overlap=model.overlap,
            halo=geometry.halo,
            min_size=geometry.min_size,
            step=geometry.step,
            calibrated_note=", calibrated" if calibration else "",
            calibrated_detail=calibrated_detail(config, settings),
            training_data=training_data_text(config),
            input_mean=config.normalization.input_mean,
            input_std=config.normalization.input_std,
            max_mean_distance=input_range.MAX_MEAN_DISTANCE,
            max_std_ratio=input_range.MAX_STD_RATIO,
            validation=validation_text(evaluation, config),
            sampler_note=sampler_note(config, settings),
            origin=origin_text(config),
        )
    )


def calibrated_detail(config: RunDescription, settings: InferenceSettings) -> str:
    """How the package's std is calibrated, and whether the fit holds for the package's settings
    (export warns where it does not; the README must say it too)."""
    calibration = config.calibration
    if calibration is None:
        return " (not calibrated: run `hazematching calibrate` before exporting to calibrate it)"
    if differ := calibration.differences(settings):
        return (
            f", calibrated as {calibrated_std(calibration)} (clipped at 0); but the calibration was fitted with "
            f"{differ[0]} and this package uses {differ[1]}, so the calibrated std may not match the observed error"
        )
    return (
        f", calibrated as {calibrated_std(calibration)} (clipped at 0) so that it matches the observed error "
        "(see Validation)"
    )


def calibrated_std(calibration) -> str:
    """'a × std + b' as a reader writes it (a negative b with a minus sign, not '+ -')."""
    sign = "−" if calibration.offset < 0 else "+"
    return f"{calibration.scale:.4g} × std {sign} {abs(calibration.offset):.4g}"


def package_defaults(config: RunDescription, authors: list[str] | None, license: str | None) -> tuple[list, str]:
    """Authors and licence of the weights: what was given, else for the paper's imported checkpoints
    their authors and licence, else ours."""
    imported = config.imported is not None and config.imported.verified
    authors = authors or (PAPER_AUTHORS if imported else ["HazeMatching contributors"])
    return authors, license or (PAPER_WEIGHTS_LICENSE if imported else DEFAULT_LICENSE)


def validation_text(evaluation: Path, config: RunDescription) -> str:
    lines = []
    metrics_path = evaluation / "metrics.json"
    if metrics_path.is_file():
        from hazematching.evaluation.evaluate import markdown_table

        result = json.loads(metrics_path.read_text())
        lines += [
            f"`hazematching evaluate` on {result['images']} held-out image(s) (`{result['data']}`), "
            f"sampler settings {result['settings']}:",
            "",
            markdown_table(result["mean"]),
        ]
    else:
        lines.append(f"No `hazematching evaluate` results were found in `{evaluation}` when this package was made.")
    calibration = config.calibration
    if calibration:
        lines.append(
            f"Uncertainty calibration (`hazematching calibrate`): std' = max({calibrated_std(calibration)}, 0); "
            f"mean |RMSE − RMV| over {calibration.bins} std bins on "
            f"`{calibration.plot_data}`: "
            f"{calibration.mean_abs_deviation_before:.4g} before, {calibration.mean_abs_deviation_after:.4g} after."
        )
    if config.imported is not None:
        who = (
            "by the paper's authors (Adam, learning rate 1e-4, batch 16, t on a 20-point grid)"
            if config.imported.verified
            else "outside this project (an imported checkpoint)"
        )
        training = f"\nTraining: {who}; the imported run is described in `training_config.json`. "
    else:
        training = (
            f"\nTraining: {config.step} steps, {config.num_processes} process(es), objective guided CFM; "
            "the full training configuration is attached as `training_config.json`. "
        )
    lines.append(
        training + "The test tensors of this package are the genuine output of this model on a crop of a "
        "validation image."
    )
    return "\n".join(lines)


def training_data_text(config: RunDescription) -> str:
    """What the model was trained on, as the README's intended-use paragraph names it."""
    source = config.imported
    if source is None:
        return str(config.training.data)
    if source.release:
        return f"the paper's {source.release} data set"
    return "the data of the imported checkpoint"


def origin_text(config: RunDescription) -> str:
    """Where the weights come from, for runs that were not trained by this project."""
    source = config.imported
    if source is None:
        return ""
    network = (
        "The network is the paper's own (a guided-diffusion U-Net with self-attention over each tile, so the "
        f"model works in tiles of the {config.training.crop_size}-pixel patches it was trained on)"
    )
    if source.verified:
        return (
            f"\n\n{network}, and its weights are the authors' released **{source.release}** checkpoint "
            f"(sha256 `{source.sha256}`), imported with `hazematching reference import`."
        )
    trained = f" trained on the {source.release} data" if source.release else ""
    return f"\n\n{network}; its weights{trained} were imported with `hazematching reference import`."


def mmse_detail(config: RunDescription, settings: InferenceSettings) -> str:
    """How the MMSE channel is computed, and why that estimate (what the run was trained for, what
    ``hazematching tune`` measured)."""
    if settings.mmse != "anchor":
        text = "the mean (the MMSE) and standard deviation over the samples"
        if settings.sample_noise == "antithetic":
            text += (
                ", drawn in antithetic pairs (every second sample starts from the negated noise of the one before "
                "it; each is still a posterior sample, and their mean varies less than that of independent samples)"
            )
        chosen = config.recommended_sampler
        if chosen is not None and chosen.mmse == "samples" and chosen.mmse_psnr_delta is not None:
            absolute = chosen.mmse_absolute_psnr_delta
            text += (
                f". `hazematching tune` on `{chosen.data}` also measured the network's own prediction of the "
                f"posterior mean (v(0, 0, c), one evaluation) and kept the samples' mean: the prediction scored "
                f"{chosen.mmse_psnr_delta:+.2f} dB PSNR"
                + (f" and {absolute:+.2f} dB absolute PSNR" if absolute is not None else "")
                + " against it"
            )
        return text
    fraction = config.training.mean_anchor_fraction
    trained = (
        f"the network was trained to give it there on {fraction:.0%} of its training items (--mean-anchor-fraction)"
        if fraction > 0
        else "with the paper's objective this is the t = 0 limit of the learned velocity, not a separately "
        "trained output"
    )
    text = (
        "the MMSE as the network's velocity at x = 0, t = 0 (one more network evaluation: a prediction of the "
        f"posterior mean; {trained}) and the standard deviation over the samples"
    )
    chosen = config.recommended_sampler
    if chosen is not None and chosen.mmse == "samples" and chosen.mmse_psnr_delta is not None:
        absolute = chosen.mmse_absolute_psnr_delta
        text += (
            f". Note: `hazematching tune` on `{chosen.data}` did not recommend it for this model "
            f"({chosen.mmse_psnr_delta:+.2f} dB PSNR"
            + (f", {absolute:+.2f} dB absolute PSNR" if absolute is not None else "")
            + " against the samples' mean); it was chosen when this package was exported"
        )
    if chosen is not None and chosen.mmse == "anchor" and chosen.mmse_psnr_delta is not None:
        absolute = chosen.mmse_absolute_psnr_delta
        text += (
            f". `hazematching tune` on `{chosen.data}` chose it: {chosen.mmse_psnr_delta:+.2f} dB PSNR"
            + (f" and {absolute:+.2f} dB absolute PSNR" if absolute is not None else "")
            + f" against the mean of {chosen.samples} samples of the reference sampler"
        )
    return text


def sampler_note(config: RunDescription, settings: InferenceSettings) -> str:
    """Why this solver and step count, when they are the ones ``hazematching tune`` recommended."""
    chosen = config.recommended_sampler
    if chosen is None or (chosen.solver, chosen.steps) != (settings.solver, settings.steps):
        return ""
    solver, steps = chosen.reference_steps()
    measured = f"K = {chosen.samples}" + (
        f"; this package draws K = {settings.samples}" if chosen.samples != settings.samples else ""
    )
    return (
        f" The {chosen.solver} solver with {chosen.steps} steps is this model's tuned setting (`hazematching tune`"
        f" on `{chosen.data}`, measured at {measured}, seed {chosen.seed}): {chosen.speedup:.1f}× fewer network"
        f" evaluations than {steps} {solver.capitalize()} steps for {chosen.psnr_delta:+.2f} dB PSNR of the"
        f" samples' mean and {chosen.structure_text()}."
    )

"""Export a trained run as a bioimage.io model package (RDF 0.5, built from bioimageio.spec classes).

The package's single model call is ``hazematching.core.Dehazer``: normalisation, in-graph hash noise,
K samples x N solver steps, mean and (calibrated) std, as one output tensor with channels
[mean, std] (ilastik accepts only one output, and it must have a channel axis).
Weight formats: TorchScript (scripted, so loops and sizes stay dynamic; what deepImageJ runs) and
optionally the state dict with a generated single-file architecture that imports torch only.
One job per module, as CAREamics' ``model_io``: geometry (sizes), test_tensors (and cover),
documentation (README, authors, licence), weights, description (the RDF); this one packs them.
"""

import os
import tempfile
import warnings
from pathlib import Path

from hazematching.commands import DEFAULT_LICENSE, EXPORT_FORMATS, EXPORT_NAME, PAPER_WEIGHTS_LICENSE, TEST_SIZE
from hazematching.core import Dehazer
from hazematching.core.tiles import window
from hazematching.data.io import DataError
from hazematching.inference.predict import CalibrationWarning, settings_warnings
from hazematching.run import LoadedRun, RunError, load_model
from hazematching.settings import InferenceSettings, SettingError, resolve_settings

from .description import model_description
from .documentation import package_defaults, write_documentation
from .geometry import Geometry
from .test_tensors import write_test_files
from .weights import strip_relative_imports, weight_entries

__all__ = ["DEFAULT_LICENSE", "PAPER_WEIGHTS_LICENSE", "TEST_SIZE", "strip_relative_imports"]  # re-exported

FORMATS = EXPORT_FORMATS


def export_model(
    run_dir: Path,
    output: Path,
    samples: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    solver: str | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    mmse: str | None = None,
    sample_noise: str | None = None,
    name: str = EXPORT_NAME,
    authors: list[str] | None = None,
    maintainers: list[str] | None = None,
    license: str | None = None,
    formats: tuple[str, ...] = FORMATS,
    test_image: Path | None = None,
    test_channel: int | None = None,
    test_size: int | None = None,
    evaluation: Path | None = None,
) -> Path:
    """Write the .zip package atomically; returns its path. ``evaluation``: the folder of
    ``hazematching evaluate``'s metrics.json for the README (default: RUN/evaluation, if it exists)."""
    from bioimageio.spec import ValidationContext

    run_dir, output = Path(run_dir), Path(output)
    _check_request(output, formats, samples, steps)
    if evaluation is not None and not (Path(evaluation) / "metrics.json").is_file():
        raise DataError(f"--evaluation {evaluation}: no metrics.json there (write it with `hazematching evaluate`)")
    evaluation = Path(evaluation) if evaluation is not None else run_dir / "evaluation"
    run = load_model(run_dir)
    if run.objective != "cfm":
        raise RunError(f"{run_dir} is a U-Net baseline run; only HazeMatching runs can be exported")
    settings = resolve_settings(run.config, samples, steps, seed, solver, tile_size, overlap, mmse, sample_noise)
    if run.config.calibration is not None and (problem := run.config.calibration.mismatch(settings, str(run_dir))):
        warnings.warn(f"the package applies the std calibration, but {problem}", CalibrationWarning, stacklevel=2)
    for message, category in settings_warnings(run, settings, calibrated=False, tiled=True):  # as predict's
        warnings.warn(f"the package: {message}", category, stacklevel=2)
    geometry = Geometry.of(run.model, window(settings.tile_size, settings.overlap, run.model.stride)[0])
    kwargs = _dehazer_kwargs(run, settings, geometry)
    model = Dehazer(**kwargs).eval()
    model.sampler.net.load_state_dict(run.model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scripted = write_test_files(tmp, model, run.config, test_image, test_size, geometry, test_channel)
        write_documentation(tmp, evaluation, run.config, model, settings, geometry, name)
        weights = weight_entries(tmp, formats, scripted, model, kwargs)
        # No network look-ups while building and saving (GitHub user names are checked by the
        # bioimage.io upload); file hashes are computed when the package is saved.
        with ValidationContext(perform_io_checks=False):
            authors, license = package_defaults(run.config, authors, license)
            anchor_trained = run.config.training.mean_anchor_fraction > 0
            descr = model_description(
                tmp, settings, geometry, weights, name, authors, maintainers, license, anchor_trained,
                calibrated=run.config.calibration is not None,
            )  # fmt: skip
            _save_atomically(descr, output)
    return output


def _check_request(output: Path, formats: tuple[str, ...], samples: int | None, steps: int | None) -> None:
    """Reject bad flags and an unusable output before any work is done."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise SettingError(f"--formats {','.join(formats)}: choose from {','.join(FORMATS)}")
    for flag, value in (("--samples", samples), ("--steps", steps)):
        if value is not None and value < 1:
            raise SettingError(f"{flag} {value}: must be at least 1")
    if output.suffix != ".zip":
        raise ValueError(f"--output {output}: a bioimage.io package path must end in .zip")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the output folder {output.parent}: {exc}") from exc
    if not os.access(output.parent, os.W_OK):
        raise RunError(f"output folder {output.parent} is not writable")


def _dehazer_kwargs(run: LoadedRun, settings: InferenceSettings, geometry: Geometry) -> dict:
    """``Dehazer(**kwargs)``: also the state-dict architecture's kwargs in the RDF."""
    calibration = run.config.calibration
    return {
        "architecture": run.config.architecture.model_dump(mode="json"),
        **run.normalization.to_dict(),
        "samples": settings.samples,
        "steps": settings.steps,
        "seed": settings.seed,
        "std_scale": calibration.scale if calibration else 1.0,
        "std_offset": calibration.offset if calibration else 0.0,
        "solver": settings.solver,
        "tile_size": settings.tile_size,
        "overlap": settings.overlap,
        "halo": geometry.halo,  # consumer padding by the halo is recognised and not computed on
        # packages that average their samples into the MMSE keep the kwargs of earlier releases
        **({"mmse": settings.mmse} if settings.mmse != "samples" else {}),
        **({"sample_noise": settings.sample_noise} if settings.sample_noise != "independent" else {}),
    }


def _save_atomically(descr, output: Path) -> None:
    """Written under a hidden name and renamed: a package under its final name is always complete."""
    from bioimageio.spec import save_bioimageio_package

    partial = output.with_name(f".{output.name}.partial.zip")
    try:
        save_bioimageio_package(descr, output_path=partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, output)

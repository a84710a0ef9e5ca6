"""Export a trained run as a bioimage.io model package (RDF 0.5, built from bioimageio.spec classes).

The package's single model call is ``hazematching.core.Dehazer``: normalisation, in-graph hash noise,
K samples x N solver steps, mean and (calibrated) std, as one output tensor with channels
[mean, std] (ilastik accepts only one output, and it must have a channel axis).
Weight formats: TorchScript (scripted, so loops and sizes stay dynamic; what deepImageJ runs) and
optionally the state dict with a generated single-file architecture that imports torch only.
"""

import ast
import hashlib
import importlib.resources
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

import hazematching.core
from hazematching.commands import DEFAULT_LICENSE, EXPORT_FORMATS, EXPORT_NAME, PAPER_WEIGHTS_LICENSE, TEST_SIZE
from hazematching.core import Dehazer, networks
from hazematching.core.tiles import window
from hazematching.data.io import DataError, read_split
from hazematching.inference import input_range
from hazematching.inference.predict import CalibrationWarning
from hazematching.run import LoadedRun, RunDescription, RunError, load_model
from hazematching.settings import InferenceSettings, SettingError, resolve_settings

CORE_DIR = Path(hazematching.core.__file__).parent
TEMPLATE = importlib.resources.files("hazematching.rdf") / "model_README.md"
# dependency order
CORE_FILES = ("noise.py", "tiles.py", "unet.py", "reference_unet.py", "networks.py", "sampler.py", "dehazer.py")
FORMATS = EXPORT_FORMATS
PAPER_DOI = "10.48550/arXiv.2506.22397"


def strip_relative_imports(source: str) -> str:
    """``source`` without its module-level relative imports (single- or multi-line), found by ``ast``."""
    dropped = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            dropped.update(range(node.lineno - 1, node.end_lineno))
    return "\n".join(line for i, line in enumerate(source.splitlines()) if i not in dropped)


def architecture_source() -> str:
    """The core modules as one file (relative imports dropped): the state-dict architecture."""
    parts = ['"""HazeMatching network and sampler (generated from hazematching.core; imports torch only)."""\n']
    for name in CORE_FILES:
        parts.append(f"# ---- {name} ----\n{strip_relative_imports((CORE_DIR / name).read_text())}\n")
    return "\n".join(parts)


def receptive_radius(net: torch.nn.Module, size: int = 257) -> int:
    """``core.networks.receptive_radius``; a network whose field is not local cannot be tiled by consumers."""
    radius = networks.receptive_radius(net, size)
    if radius is None:
        raise RunError(
            f"receptive field reaches the probe border ({size // 2} px): attention or non-local layers cannot be tiled"
        )
    return radius


def _cover(image: np.ndarray, output: np.ndarray, path: Path) -> None:
    """input | MMSE side by side (2:1), each scaled to its 1-99.8 percentile range."""
    from PIL import Image

    def scaled(a):
        lo, hi = np.percentile(a, [1, 99.8])
        return (np.clip((a - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)

    Image.fromarray(np.concatenate([scaled(image), scaled(output)], axis=1)).save(path, optimize=True)


def _validation_text(evaluation: Path, config: RunDescription) -> str:
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
            f"Uncertainty calibration (`hazematching calibrate`): std' = {calibration.scale:.4g} × std + "
            f"{calibration.offset:.4g}; mean |RMSE − RMV| over {calibration.bins} std bins on "
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


def _test_image(config: RunDescription, test_image: Path | None, size: int | None, geometry: "Geometry") -> np.ndarray:
    """A centred square crop of ``size`` (None: ``TEST_SIZE``, or less where the image is smaller),
    fitted to the sizes the package accepts."""
    if test_image is not None:
        from hazematching.data.io import read_image_2d

        image = read_image_2d(Path(test_image), geometry.min_size)
    else:
        data = config.training.data
        val = data / "val" if (data / "val").is_dir() else data
        try:
            image = read_split(val)[0].input
        except Exception as exc:
            raise RunError(f"no test image: the run's data {val} cannot be read ({exc}); pass --test-image") from exc
    size = geometry.fit(min(TEST_SIZE, min(image.shape)) if size is None else size)
    if min(image.shape) < size:
        raise RunError(
            f"test image of shape {image.shape} is smaller than the test tensor size {size}; give a smaller "
            "--test-size or a larger --test-image"
        )
    y0, x0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return np.ascontiguousarray(image[y0 : y0 + size, x0 : x0 + size], dtype=np.float32)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Geometry:
    """Sizes the consumers see: the halo they add, the smallest input and the size step."""

    halo: int
    min_size: int
    step: int

    def fit(self, size: int) -> int:
        """The largest accepted size (min + k * step) not above ``size``, at least ``min_size``."""
        return max(self.min_size, size - (size - self.min_size) % self.step)

    @classmethod
    def of(cls, net: torch.nn.Module, tile_size: int = 0) -> "Geometry":
        stride = net.stride
        if getattr(net, "fixed_window", False):
            # global attention: no finite receptive field; blocks of at least one tile, whose outer
            # quarter-tile is context, as in the model's own tiling
            halo = -(-(tile_size // 4) // stride) * stride
            return cls(halo=halo, min_size=max(tile_size, (2 * halo // stride + 1) * stride), step=1)
        halo = -(-receptive_radius(net) // stride) * stride
        # every size from min on (step 1): the model pads the image to its stride itself (one border
        # rule, core/dehazer.py); min leaves a non-empty centre inside the consumer's halo
        return cls(halo=halo, min_size=(2 * halo // stride + 1) * stride, step=1)


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
    name: str = EXPORT_NAME,
    authors: list[str] | None = None,
    maintainers: list[str] | None = None,
    license: str | None = None,
    formats: tuple[str, ...] = FORMATS,
    test_image: Path | None = None,
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
    settings = resolve_settings(run.config, samples, steps, seed, solver, tile_size, overlap, mmse)
    if run.config.calibration is not None and (problem := run.config.calibration.mismatch(settings)):
        warnings.warn(f"the package applies the std calibration, but {problem}", CalibrationWarning, stacklevel=2)
    geometry = Geometry.of(run.model, window(settings.tile_size, settings.overlap, run.model.stride)[0])
    kwargs = _dehazer_kwargs(run, settings, geometry)
    model = Dehazer(**kwargs).eval()
    model.sampler.net.load_state_dict(run.model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scripted = _write_test_files(tmp, model, run.config, test_image, test_size, geometry)
        _write_documentation(tmp, evaluation, run.config, model, settings, geometry, name)
        weights = _weights(tmp, formats, scripted, model, kwargs)
        # No network look-ups while building and saving (GitHub user names are checked by the
        # bioimage.io upload); file hashes are computed when the package is saved.
        with ValidationContext(perform_io_checks=False):
            authors, license = package_defaults(run.config, authors, license)
            descr = _model_description(tmp, settings, geometry, weights, name, authors, maintainers, license)
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
    }


def _write_test_files(
    tmp: Path, model: Dehazer, config: RunDescription, test_image: Path | None, size: int | None, geometry: "Geometry"
):
    """Test and sample tensors (the genuine output of the scripted model), cover, training config;
    returns the scripted model."""
    image = _test_image(config, test_image, size, geometry)
    test_input = image[None, None]
    scripted = torch.jit.script(model)
    with torch.no_grad():
        test_output = scripted(torch.from_numpy(test_input)).numpy()
    np.save(tmp / "test_input.npy", test_input)
    np.save(tmp / "test_output.npy", test_output)
    # sample tensors: the same data as images (the deepImageJ check feeds the sample input)
    tifffile.imwrite(tmp / "sample_input.tif", test_input[0, 0])
    tifffile.imwrite(tmp / "sample_output.tif", test_output[0], metadata={"axes": "CYX"})
    _cover(image, test_output[0, 0], tmp / "cover.png")
    (tmp / "training_config.json").write_bytes(config.to_json())
    return scripted


def _write_documentation(
    tmp: Path,
    evaluation: Path,
    config: RunDescription,
    model: Dehazer,
    settings: InferenceSettings,
    geometry: Geometry,
    name: str,
) -> None:
    calibration = config.calibration
    calibrated_detail = (
        f", calibrated as {calibration.scale:.4g} × std + {calibration.offset:.4g} so that it matches "
        "the observed error (see Validation)"
        if calibration
        else " (not calibrated: run `hazematching calibrate` before exporting to calibrate it)"
    )
    (tmp / "README.md").write_text(
        TEMPLATE.read_text().format(
            name=name,
            samples=settings.samples,
            steps=settings.steps,
            seed=settings.seed,
            solver=settings.solver.capitalize(),
            mmse_detail=(
                "the MMSE as the network's velocity at x = 0, t = 0 (one more network evaluation: a prediction "
                "of the posterior mean, which the network was trained to give there) and the standard deviation "
                "over the samples"
                if settings.mmse == "anchor"
                else "mean (the MMSE) and standard deviation over the samples"
            ),
            tile_size=model.tile_size,
            overlap=model.overlap,
            halo=geometry.halo,
            min_size=geometry.min_size,
            step=geometry.step,
            calibrated_note=", calibrated" if calibration else "",
            calibrated_detail=calibrated_detail,
            training_data=_training_data_text(config),
            input_mean=config.normalization.input_mean,
            input_std=config.normalization.input_std,
            max_mean_distance=input_range.MAX_MEAN_DISTANCE,
            max_std_ratio=input_range.MAX_STD_RATIO,
            validation=_validation_text(evaluation, config),
            sampler_note=_sampler_note(config, settings),
            origin=_origin_text(config),
        )
    )


PAPER_AUTHORS = ["Anirban Ray", "Ashesh", "Florian Jug"]


def package_defaults(config: RunDescription, authors: list[str] | None, license: str | None) -> tuple[list, str]:
    """Authors and licence of the weights: what was given, else for the paper's imported checkpoints
    their authors and licence, else ours."""
    imported = config.imported is not None and config.imported.verified
    authors = authors or (PAPER_AUTHORS if imported else ["HazeMatching contributors"])
    return authors, license or (PAPER_WEIGHTS_LICENSE if imported else DEFAULT_LICENSE)


def _training_data_text(config: RunDescription) -> str:
    """What the model was trained on, as the README's intended-use paragraph names it."""
    source = config.imported
    if source is None:
        return str(config.training.data)
    if source.release:
        return f"the paper's {source.release} data set"
    return "the data of the imported checkpoint"


def _origin_text(config: RunDescription) -> str:
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


def _sampler_note(config: RunDescription, settings: InferenceSettings) -> str:
    """Why this solver and step count, when they are the ones ``hazematching tune`` recommended."""
    chosen = config.recommended_sampler
    if chosen is None or (chosen.solver, chosen.steps) != (settings.solver, settings.steps):
        return ""
    solver, steps = chosen.reference_steps()
    return (
        f" The {chosen.solver} solver with {chosen.steps} steps is this model's tuned setting (`hazematching tune`"
        f" on `{chosen.data}`, K = {chosen.samples}, seed {chosen.seed}): {chosen.speedup:.1f}× fewer network"
        f" evaluations than {steps} {solver.capitalize()} steps for {chosen.psnr_delta:+.2f} dB PSNR of the"
        f" samples' mean and {chosen.structure_text()}."
    )


def _weights(tmp: Path, formats: tuple[str, ...], scripted, model: Dehazer, kwargs: dict) -> dict:
    """The weight entries: TorchScript (what deepImageJ runs) and the state dict with its architecture."""
    from bioimageio.spec.model import v0_5 as bmz

    weights = {}
    pytorch_version = bmz.Version(torch.__version__.split("+")[0])
    if "torchscript" in formats:
        scripted.save(str(tmp / "hazematching_torchscript.pt"))
        weights["torchscript"] = bmz.TorchscriptWeightsDescr(
            source=tmp / "hazematching_torchscript.pt",
            sha256=_sha256(tmp / "hazematching_torchscript.pt"),
            pytorch_version=pytorch_version,
            parent="pytorch_state_dict" if "pytorch_state_dict" in formats else None,
        )
    if "pytorch_state_dict" in formats:
        (tmp / "hazematching_architecture.py").write_text(architecture_source())
        torch.save(model.state_dict(), tmp / "hazematching_state_dict.pt")
        weights["pytorch_state_dict"] = bmz.PytorchStateDictWeightsDescr(
            source=tmp / "hazematching_state_dict.pt",
            sha256=_sha256(tmp / "hazematching_state_dict.pt"),
            architecture=bmz.ArchitectureFromFileDescr(
                source=tmp / "hazematching_architecture.py",
                sha256=_sha256(tmp / "hazematching_architecture.py"),
                callable=bmz.Identifier("Dehazer"),
                kwargs=kwargs,
            ),
            pytorch_version=pytorch_version,
        )
    return weights


def _model_description(
    tmp: Path,
    settings: InferenceSettings,
    geometry: Geometry,
    weights: dict,
    name: str,
    authors: list[str] | None,
    maintainers: list[str] | None,
    license: str,
):
    """The RDF, from bioimageio.spec classes: one input, one output with channels [mean, std]."""
    from bioimageio.spec.model import v0_5 as bmz

    halo, min_size, step = geometry.halo, geometry.min_size, geometry.step
    samples, steps, solver = settings.samples, settings.steps, settings.solver
    space_in = [
        bmz.SpaceInputAxis(id=bmz.AxisId(a), size=bmz.ParameterizedSize(min=min_size, step=step)) for a in ("y", "x")
    ]
    space_out = [
        bmz.SpaceOutputAxisWithHalo(
            id=bmz.AxisId(a),
            size=bmz.SizeReference(tensor_id=bmz.TensorId("widefield"), axis_id=bmz.AxisId(a)),
            halo=halo,
        )
        for a in ("y", "x")
    ]
    return bmz.ModelDescr(
        name=name,
        description=(
            "Dehazes 2D widefield fluorescence images into confocal-like images with guided conditional flow "
            f"matching (HazeMatching). One call runs {samples} posterior samples x {steps} {solver} steps and "
            "returns their mean (MMSE) and per-pixel std as two output channels."
        ),
        authors=[bmz.Author(name=a) for a in authors],
        maintainers=[bmz.Maintainer(github_user=m) for m in (maintainers or [])],
        cite=[
            bmz.CiteEntry(
                text="Ray, A., Ashesh, Jug, F. HazeMatching: Dehazing Light Microscopy Images with Guided "
                "Conditional Flow Matching. arXiv:2506.22397",
                doi=bmz.Doi(PAPER_DOI),
            )
        ],
        license=bmz.LicenseId(license),
        tags=[
            "dehazing",
            "widefield",
            "confocal",
            "fluorescence-light-microscopy",
            "flow-matching",
            "uncertainty",
            "2d",
            "pytorch",
            "image-restoration",
        ],
        documentation=bmz.FileDescr(source=tmp / "README.md", sha256=_sha256(tmp / "README.md")),
        covers=[bmz.FileDescr(source=tmp / "cover.png", sha256=_sha256(tmp / "cover.png"))],
        attachments=[bmz.FileDescr(source=tmp / "training_config.json", sha256=_sha256(tmp / "training_config.json"))],
        inputs=[
            bmz.InputTensorDescr(
                id=bmz.TensorId("widefield"),
                description="raw widefield image (float32; normalised inside the model)",
                axes=[
                    bmz.BatchAxis(id=bmz.AxisId("batch"), size=1),
                    bmz.ChannelAxis(id=bmz.AxisId("channel"), channel_names=[bmz.Identifier("widefield")]),
                    *space_in,
                ],
                test_tensor=bmz.FileDescr(source=tmp / "test_input.npy", sha256=_sha256(tmp / "test_input.npy")),
                sample_tensor=bmz.FileDescr(source=tmp / "sample_input.tif", sha256=_sha256(tmp / "sample_input.tif")),
                data=bmz.IntervalOrRatioDataDescr(type="float32"),
            )
        ],
        outputs=[
            bmz.OutputTensorDescr(
                id=bmz.TensorId("dehazed"),
                description="channel 'mean': MMSE dehazed image; channel 'std': per-pixel std over the samples",
                axes=[
                    bmz.BatchAxis(id=bmz.AxisId("batch"), size=1),
                    bmz.ChannelAxis(
                        id=bmz.AxisId("channel"), channel_names=[bmz.Identifier("mean"), bmz.Identifier("std")]
                    ),
                    *space_out,
                ],
                test_tensor=bmz.FileDescr(source=tmp / "test_output.npy", sha256=_sha256(tmp / "test_output.npy")),
                sample_tensor=bmz.FileDescr(
                    source=tmp / "sample_output.tif", sha256=_sha256(tmp / "sample_output.tif")
                ),
                data=bmz.IntervalOrRatioDataDescr(type="float32"),
            )
        ],
        weights=bmz.WeightsDescr(**weights),
        version="0.1.0",
        config=bmz.Config(bioimageio=bmz.BioimageioConfig(architecture_type="U-Net, guided flow matching")),
    )


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

"""What the napari widget does, without Qt: load a model (a run folder or an exported bioimage.io
package), check a layer, dehaze it plane by plane through the same code as the CLI.

A run goes through ``predict_array`` (the one sampler, the one tiling) with each plane seeded as
``hazematching predict`` seeds the planes of a file (``plane_seed``), so a layer opened from
``stack.tif`` gives the numbers of ``hazematching predict --input stack.tif``. A package runs in
bioimageio.core, as ``bioimageio predict`` does, with the sampler settings baked into it.
"""

import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hazematching.data.io import DataError
from hazematching.inference.experiment.jobs import MIN_SIZE
from hazematching.inference.experiment.schedule import plane_seed
from hazematching.inference.input_range import InputRangeWarning, out_of_range
from hazematching.run import NormalizationStats, RunError
from hazematching.settings import DEFAULT_NOISE, InferenceSettings

PACKAGE_MARKER = "training_config.json"  # every package this project exports carries it


class Cancelled(Exception):
    """The user pressed Cancel."""


@dataclass
class Result:
    mean: np.ndarray
    std: np.ndarray | None
    samples: np.ndarray | None  # (K, *layer shape) when asked for
    warning: str | None = None  # intensities far outside the training range (``input_range``)


@dataclass
class Defaults:
    """What the widget pre-fills: the run's resolved settings (its tuned setting when there is one)."""

    settings: InferenceSettings | None  # None: a package (its settings are baked in) or a U-Net run (none)
    calibrated_available: bool
    note: str


class RunModel:
    """A training run folder (model.safetensors + config.json)."""

    kind = "run"

    def __init__(self, path: Path, device: str = "auto"):
        from hazematching.inference.predict import resolve_device
        from hazematching.run import load_model

        self.path = Path(path)
        self.run = load_model(self.path, device=resolve_device(device) if device != "auto" else None)
        self.normalization = self.run.normalization

    def defaults(self) -> Defaults:
        from hazematching.settings import resolve_settings

        if self.run.objective != "cfm":  # sampler settings would be refused
            return Defaults(None, False, f"run {self.path}: a U-Net baseline (one prediction, no samples or std)")
        settings = resolve_settings(self.run.config)
        tuned = self.run.config.recommended_sampler is not None
        note = f"run {self.path}: " + ("its tuned sampler setting" if tuned else "its sampler defaults")
        return Defaults(settings, self.run.config.calibration is not None, note)

    def plane(self, image, settings: InferenceSettings, keep_samples: bool, calibrated: bool, on_progress) -> tuple:
        from hazematching.inference.predict import predict_array

        with warnings.catch_warnings():  # checked once per layer by ``dehaze``
            warnings.simplefilter("ignore", InputRangeWarning)
            result = predict_array(
                self.run,
                image,
                settings=settings,
                keep_samples=keep_samples,
                calibrated=calibrated,
                progress=False,
                on_progress=on_progress,
            )
        return result.mean, result.std, result.samples


class PackageModel:
    """A bioimage.io package exported by this project, run by bioimageio.core."""

    kind = "package"

    def __init__(self, path: Path, device: str = "auto"):
        self.path = Path(path)
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = set(zf.namelist())
                self.training = json.loads(zf.read(PACKAGE_MARKER)) if PACKAGE_MARKER in names else None
        except (OSError, zipfile.BadZipFile) as exc:
            raise RunError(f"{self.path}: not a readable .zip ({exc})") from exc
        if "rdf.yaml" not in names or self.training is None:
            raise RunError(f"{self.path}: not a bioimage.io package exported by HazeMatching (no {PACKAGE_MARKER})")
        from bioimageio.core import create_prediction_pipeline, load_model_description

        description = load_model_description(str(self.path), perform_io_checks=False)
        devices = None if device == "auto" else [device]
        self.pipeline = create_prediction_pipeline(description, devices=devices)
        self.input_id = description.inputs[0].id
        self.normalization = NormalizationStats(**self.training["normalization"])  # the run's, attached
        self.output_id = description.outputs[0].id

    def defaults(self) -> Defaults:
        return Defaults(None, False, f"package {self.path.name}: its sampler settings are part of the package")

    def plane(self, image, settings: None, keep_samples: bool, calibrated: bool, on_progress) -> tuple:
        """One plane as ``bioimageio predict`` computes it (the package pads and keys its own noise)."""
        from bioimageio.core import Tensor, predict

        if keep_samples or calibrated:
            raise RunError("an exported package returns the MMSE and the std only (no samples, no calibration)")
        tensor = Tensor.from_numpy(image[None, None].astype(np.float32), dims=("batch", "channel", "y", "x"))
        output = predict(model=self.pipeline, inputs={self.input_id: tensor}, sample_id="layer")
        data = np.asarray(output.members[self.output_id].data)[0]
        on_progress(1, 1)
        return data[0].astype(np.float32), data[1].astype(np.float32), None


def load(path: str | Path, device: str = "auto"):
    """A run folder or an exported package, or a ``RunError`` that says what the path is instead."""
    path = Path(path).expanduser()
    if not str(path).strip() or not path.exists():
        raise RunError(f"{path}: does not exist; choose a run folder or an exported .zip")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise RunError(f"{path}: expected a run folder or a bioimage.io .zip exported by HazeMatching")
        return PackageModel(path, device)
    return RunModel(path, device)


def check_layer(kind: str, data, rgb: bool = False) -> None:
    """A layer the method can dehaze: a grayscale image whose YX planes are large enough."""
    if kind != "image":
        raise DataError(f"a {kind} layer cannot be dehazed: choose an image layer")
    if rgb:
        raise DataError("an RGB image cannot be dehazed: choose a single-channel (grayscale) fluorescence image")
    shape = tuple(data.shape)
    if len(shape) < 2 or min(shape[-2:]) < MIN_SIZE:
        raise DataError(f"layer of shape {shape}: its YX planes must be at least {MIN_SIZE} x {MIN_SIZE} pixels")
    if np.dtype(data.dtype).kind not in "uif":
        raise DataError(f"layer of type {data.dtype}: expected integer or float pixels")


def noise_key(layer_name: str, source_path: str | None) -> str:
    """The name that keys the noise: the file a layer was opened from (as ``hazematching predict``
    keys a file), else the layer's name."""
    return Path(source_path).name if source_path else layer_name


def dehaze(
    model,
    data,
    key: str,
    settings: dict | None = None,
    noise: str = DEFAULT_NOISE,
    keep_samples: bool = False,
    calibrated: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Result:
    """Every YX plane of ``data`` (leading axes in C order, as the CLI numbers them), seeded per plane
    as the CLI seeds a file named ``key``. Raises ``Cancelled`` as soon as ``cancelled()`` is true."""
    shape = tuple(data.shape)
    planes = int(np.prod(shape[:-2], dtype=np.int64))
    inference = None  # a package's settings are part of it
    if model.kind == "run":
        from hazematching.settings import resolve_settings

        inference = resolve_settings(model.run.config, **(settings or {}))  # once, for every plane
    mean = np.zeros(shape, np.float32)
    std = np.zeros(shape, np.float32)
    kept = None
    flat = np.asarray(data).reshape(planes, *shape[-2:])
    problem = out_of_range(model.normalization, [flat[i] for i in sorted({0, planes // 2, planes - 1})])
    for index in range(planes):

        def progress(done: int, total: int, index=index) -> None:
            if cancelled():
                raise Cancelled()
            if on_progress is not None:
                on_progress(index * total + done, planes * total)

        if cancelled():
            raise Cancelled()
        image = flat[index].astype(np.float32)
        if not np.isfinite(image).all():
            raise DataError(f"plane {index} of the layer contains NaN/Inf pixels; clean or mask the image first")
        if inference is not None:  # seeded as the CLI seeds plane ``index`` of a file named ``key``
            seeded = inference.model_copy(update={"seed": plane_seed(inference.seed, noise, key, index)})
        m, s, k = model.plane(image, seeded if inference is not None else None, keep_samples, calibrated, progress)
        mean.reshape(planes, *shape[-2:])[index] = m
        if s is not None:
            std.reshape(planes, *shape[-2:])[index] = s
        if k is not None:
            if kept is None:
                kept = np.zeros((k.shape[0], *shape), np.float32)
            kept.reshape(k.shape[0], planes, *shape[-2:])[:, index] = k
    std = std if model.kind == "package" or model.run.objective != "mse" else None
    return Result(mean, std, kept, f"{key}: {problem}" if problem else None)

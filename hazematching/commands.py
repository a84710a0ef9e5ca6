"""The ``hazematching`` subcommands' options as typed models, and the flags generated from them (as
``training/args.py`` does for the trainer), so ``--help``, ``docs/reference/cli.md`` and the values the
handlers get cannot drift apart.

A field is a flag ``--field-name`` (dest ``field_name``): ``bool`` with default False is a switch,
``list[str]`` takes one or more values, a ``Literal`` gives the choices, a field without a default is
required; ``json_schema_extra={"positional": True}`` makes it positional. A field whose type is a model
(``SettingsRequest``, ``SpeedOptions``) adds that model's flags in its place; its
``json_schema_extra={"qualifier": ...}`` extends their help ("samples K ... inside the package").
Help texts are the fields' descriptions; a default the help does not name is shown by ``cli.HelpFormatter``.

Kept light: importing it loads no inference, evaluation or export module."""

import argparse
import sys
import types
import typing

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hazematching.data.simulate import DEPTH, NUM_IMAGES, SEED, SIZE
from hazematching.paper.releases import NAMES
from hazematching.run import CALIBRATION_BINS
from hazematching.settings import (
    DEFAULT_NOISE,
    MS3IM_TOLERANCE,
    NOISE_KEYING,
    PSNR_TOLERANCE,
    SAMPLE_TOLERANCE,
    SettingsRequest,
    SpeedOptions,
    setting_error,
)

# Defaults of ``hazematching export`` (export/package.py holds the same values; tests/test_cli_typed.py
# checks that they agree).
EXPORT_NAME = "HazeMatching widefield dehazing"
EXPORT_FORMATS = ("torchscript", "pytorch_state_dict")
DEFAULT_LICENSE = "BSD-3-Clause"
PAPER_WEIGHTS_LICENSE = "MIT"  # github.com/rayanirban/HazeMatching, where the paper's checkpoints are published
TEST_SIZE = 256  # edge of the package's test tensors' crop, unless the test image is smaller

Dataset = typing.Literal[NAMES]
SourceChannel = typing.Literal["ch0", "ch1", "ch2"]
Device = typing.Literal["auto", "cpu", "cuda"]
_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _positional(description: str) -> typing.Any:
    return Field(description=description, json_schema_extra={"positional": True})


class Options(BaseModel):
    """A subcommand's options: its fields are its flags; ``from_namespace`` validates parsed ones."""

    model_config = _FROZEN

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "Options":
        """The parsed flags as this model; an invalid value raises ``SettingError`` (exit status 2)."""
        try:
            return cls.model_validate(_values(cls, vars(args)))
        except ValidationError as exc:
            raise setting_error(exc) from None


def _values(model: type[BaseModel], parsed: dict) -> dict:
    values = {}
    for name, field in model.model_fields.items():
        nested = _nested(field)
        if nested is not None:
            values[name] = _values(nested, parsed)
        elif name in parsed:
            values[name] = parsed[name]
    return values


def _nested(field) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


class SimulateOptions(Options):
    out: str = Field(description="output folder")
    num_images: int = Field(NUM_IMAGES, description="pairs in total (70/15/15 train/val/test)")
    size: int = Field(SIZE, description="image height and width in pixels")
    seed: int = Field(SEED, description="the same seed gives the same data set")
    depth: int = Field(DEPTH, description="z planes of the 3D ground truth (more = more haze)")


class PredictOptions(Options):
    model: str = Field(description="run directory (model.safetensors + config.json)")
    input: str = Field(description="TIFF file or folder of TIFFs (2D or N-D)")
    output: str = Field(description="output .tif (for one input) or folder")
    settings: SettingsRequest = SettingsRequest()
    speed: SpeedOptions = SpeedOptions()
    channel: int | None = Field(
        None,
        description="channel to dehaze in multi-channel TIFFs (C axis), counted from 0 (Fiji counts from 1: its "
        "channel 2 is --channel 1), e.g. 1 for the widefield channel of paired files",
    )
    axes: str | None = Field(
        None,
        description="axes of files that do not record them, letters of TZCYX ending in YX, e.g. TZYX; for a plain "
        "multi-page TIFF the sizes of the leading axes may follow their letters, e.g. Z3C2YX (pages z0c0, z0c1, "
        "z1c0, ...); YXC for a plain (Y, X, C) file (found by itself when C < 16); size-1 axes may be left out",
    )
    overwrite: bool = Field(False, description="recompute outputs that are complete, or were made with other settings")
    recursive: bool = Field(
        False, description="also dehaze the TIFFs in sub-folders of --input; the output mirrors the folder tree"
    )
    quiet: bool = Field(False, description="no progress bar")
    save_samples: bool = Field(False, description="also write all samples")
    calibrated: bool = Field(False, description="write the calibrated std max(a*std+b, 0) (see calibrate)")
    noise: typing.Literal[tuple(NOISE_KEYING)] = Field(
        DEFAULT_NOISE, description="; ".join(f"{k}: {v}" for k, v in NOISE_KEYING.items())
    )


class EvaluateOptions(Options):
    model: str = Field(description="HazeMatching run directory")
    data: str = Field(description="paired split folder, e.g. DATA/test")
    output: str | None = Field(
        None,
        description="folder for metrics.json, metrics.md, figures/ (default: MODEL/evaluation, where export looks "
        "for it)",
    )
    baseline: str | None = Field(None, description="U-Net baseline run directory (trained with --objective mse)")
    metric_samples: int = Field(4, description="samples whose metrics are averaged for the sample row")
    lpips_backbone: str | None = Field(None, description="TorchScript file: images in [-1,1] -> list of feature maps")
    lpips_linear: str | None = Field(None, description="safetensors file with LPIPS weights lin0, lin1, ...")
    fid_backbone: str | None = Field(None, description="TorchScript file: images in [0,1] -> (N, D) features")
    settings: SettingsRequest = SettingsRequest()
    speed: SpeedOptions = SpeedOptions()


class CalibrateOptions(Options):
    model: str = Field(description="HazeMatching run directory (config.json is updated)")
    data: str = Field(description="paired validation folder, e.g. DATA/val")
    eval_data: str | None = Field(
        None,
        description="held-out paired folder for the plot (default: DATA/../test when it exists, else --data)",
    )
    bins: int = Field(CALIBRATION_BINS, description="number of std bins of the RMSE/RMV curves")
    settings: SettingsRequest = SettingsRequest()
    speed: SpeedOptions = SpeedOptions()


class TuneOptions(Options):
    model: str = Field(description="HazeMatching run directory (config.json is updated)")
    data: str = Field(description="paired held-out folder, e.g. DATA/val")
    samples: str | None = Field(None, description="comma-separated K values (default: the run's K)")
    settings: str | None = Field(
        None,
        description="comma-separated SOLVER:STEPS (default: 13 settings, plus shortcut:4,2,1 for a run trained "
        "with --shortcut-fraction)",
    )
    seed: int = Field(0, description="noise seed of every row")
    psnr_tolerance: float = Field(
        PSNR_TOLERANCE,
        ge=0,
        allow_inf_nan=False,
        description="dB of PSNR a recommendation may lose: the samples' mean of the recommended setting against "
        "Euler-20's (raise it to trade quality for speed), and the anchor MMSE against that mean (its PSNR and its "
        "absolute PSNR)",
    )
    ms3im_tolerance: float = Field(
        MS3IM_TOLERANCE,
        ge=0,
        allow_inf_nan=False,
        description="MicroMS3IM the recommended setting may lose against Euler-20",
    )
    sample_tolerance: float = Field(
        SAMPLE_TOLERANCE,
        ge=0,
        allow_inf_nan=False,
        description="FSIM (and GMSD) one posterior sample of the recommended setting may lose against Euler-20",
    )
    device: Device = SpeedOptions.model_fields["device"]
    dry_run: bool = Field(
        False,
        description="keep config.json and its table in MODEL/tuning as they are; this table goes to "
        "MODEL/tuning/dry-run",
    )


class ExportOptions(Options):
    model: str = Field(description="HazeMatching run directory")
    output: str = Field(description="package path, e.g. model.zip")
    settings: SettingsRequest = Field(SettingsRequest(), json_schema_extra={"qualifier": " inside the package"})
    evaluation: str | None = Field(
        None,
        description="folder with the metrics.json of `hazematching evaluate` for the package's README (default: "
        "MODEL/evaluation, where evaluate writes)",
    )
    name: str = Field(EXPORT_NAME, description="model name (5-128 characters)")
    authors: list[str] | None = Field(
        None,
        description="author names (default: HazeMatching contributors; the paper's authors for their released "
        "checkpoints)",
    )
    maintainers: list[str] | None = Field(None, description="maintainers' GitHub user names")
    license: str | None = Field(
        None,
        description=f"SPDX license id of the weights (default: {DEFAULT_LICENSE}; {PAPER_WEIGHTS_LICENSE} for the "
        "paper's released checkpoints)",
    )
    formats: str = Field(",".join(EXPORT_FORMATS), description="weight formats, comma separated")
    test_image: str | None = Field(
        None, description="2D TIFF for the test tensors (default: the run's first validation image)"
    )
    test_channel: int | None = Field(
        None,
        description="channel of a multi-channel --test-image, e.g. 1 for the widefield channel of the paper's "
        "paired files",
    )
    test_size: int | None = Field(
        None,
        description=f"edge of the square test tensor crop (default: {TEST_SIZE}, or less when the test image is "
        "smaller)",
    )


class ReferenceListOptions(Options):
    pass


_CHANNEL_HELP = "zebrafish only: the statistics of source channel ch0, ch1 or ch2 (the token in its file names)"


def _statistic(what: str) -> typing.Any:
    return Field(None, description=f"a checkpoint of no release: its training {what}")


class ReferenceImportOptions(Options):
    checkpoint: str = _positional("the .pth file (torch.save of the network's state dict)")
    output: str = Field(description="new run folder")
    dataset: Dataset | None = Field(
        None, description="the data set it was trained on (default: recognised from the file; needed for other files)"
    )
    source_channel: SourceChannel | None = Field(None, description=_CHANNEL_HELP)
    input_mean: float | None = _statistic("widefield mean")
    input_std: float | None = _statistic("widefield std")
    target_mean: float | None = _statistic("confocal mean")
    target_std: float | None = _statistic("confocal std")
    patch_size: int | None = Field(
        None,
        description="a checkpoint of no release: the crop size P it was trained on (default: 16 x its attention "
        "factor)",
    )


class ReferenceDownloadOptions(Options):
    dataset: Dataset = Field(description="which release")
    output: str | None = Field(None, description="import the checkpoint as this run folder")
    data: str | None = Field(None, description="also download the paired data and unpack it into this folder")
    cache: str | None = Field(
        None,
        description="download cache (default: $HAZEMATCHING_CACHE, else the user cache folder, ~/.cache/hazematching)",
    )
    source_channel: SourceChannel | None = Field(None, description=_CHANNEL_HELP)
    quiet: bool = Field(False, description="no progress bars")


def options_of(args: argparse.Namespace) -> Options | None:
    """The parsed flags of ``hazematching ...`` validated into their subcommand's model (None for a
    namespace of no subcommand); raises ``SettingError`` for an invalid value."""
    words = " ".join(str(w) for w in (getattr(args, "command", None), getattr(args, "action", None)) if w)
    model = COMMANDS.get(words)
    return None if model is None else model.from_namespace(args)


# Every (sub)command's options, by its words after ``hazematching``.
COMMANDS: dict[str, type[Options]] = {
    "simulate": SimulateOptions,
    "predict": PredictOptions,
    "evaluate": EvaluateOptions,
    "calibrate": CalibrateOptions,
    "tune": TuneOptions,
    "export": ExportOptions,
    "reference list": ReferenceListOptions,
    "reference import": ReferenceImportOptions,
    "reference download": ReferenceDownloadOptions,
}


def flat_fields(model: type[BaseModel]) -> dict[str, typing.Any]:
    """dest -> field of every flag ``model`` generates (nested models flattened in place)."""
    fields = {}
    for name, field in model.model_fields.items():
        nested = _nested(field)
        fields.update(flat_fields(nested) if nested is not None else {name: field})
    return fields


def _choices(annotation) -> tuple | None:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return None


def _scalar(annotation):
    """The Python type of a value (Optional and Annotated stripped)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args:
        return _scalar(args[0])
    if typing.get_origin(annotation) is typing.Annotated:
        return _scalar(args[0])
    return annotation


def _qualified(text: str, qualifier: str) -> str:
    """``qualifier`` at the end of the help's first clause (before its first " (" or ";")."""
    cut = min((i for i in (text.find(" ("), text.find(";")) if i >= 0), default=len(text))
    return text[:cut] + qualifier + text[cut:]


def add_flags(parser, model: type[BaseModel], qualifier: str = "") -> None:
    """One argparse argument per field of ``model``, in the fields' order."""
    qualified = getattr(model, "QUALIFIED", ())
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra or {}
        nested = _nested(field)
        if nested is not None:
            add_flags(parser, nested, extra.get("qualifier", ""))
            continue
        text = field.description or ""
        if qualifier and name in qualified:
            text = _qualified(text, qualifier)
        if extra.get("positional"):
            parser.add_argument(name, help=text)
            continue
        flag = "--" + name.replace("_", "-")
        old = tuple(extra.get("deprecated_flags", ()))  # earlier spellings, accepted with a warning
        if old:
            text += f" (formerly {', '.join(old)}, still accepted)"
        kind = _scalar(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        keywords: dict[str, typing.Any] = {"help": text}
        if field.is_required():
            keywords["required"] = True
        if kind is bool:
            parser.add_argument(flag, action="store_true", **keywords)
            continue
        keywords["default"] = default
        choices = _choices(field.annotation)
        if choices is not None:
            keywords["choices"] = choices
        elif typing.get_origin(kind) is list:
            keywords["nargs"] = "+"
        elif kind in (int, float):
            keywords["type"] = kind
        if old:
            keywords.update(action=_DeprecatedSpelling, dest=name)
        parser.add_argument(flag, *old, **keywords)


class _DeprecatedSpelling(argparse.Action):
    """Stores the value; says on stderr when the flag was given under an old spelling."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string != self.option_strings[0]:
            print(f"warning: {option_string} is deprecated: use {self.option_strings[0]}", file=sys.stderr)
        setattr(namespace, self.dest, values)

"""Typed training configuration: every flag of trainer/train.py, validated before anything heavy runs.

The same fields can come from a YAML/JSON file (``--config``); flags given on the command line
override the file.
"""

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from hazematching.architecture import KINDS, Architecture, UNetArchitecture
from hazematching.core.sampler import MMSE_ESTIMATES, SAMPLE_NOISES, SOLVERS
from hazematching.core.tiles import OVERLAP, TILE_SIZE


class SamplerConfig(BaseModel):
    """Defaults stored with the model for predict/export: K samples of an N-step ODE solve."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(
        20,
        ge=1,
        description="steps N of the ODE solver per sample, stored in the run for predict and export (with "
        "--time-grid-points G: G - 1, the grid's)",
    )
    samples: int = Field(
        8,
        ge=1,
        description="posterior samples K (their std, and their mean as the MMSE unless mmse is anchor), stored in "
        "the run for predict and export",
    )
    seed: int = Field(0, ge=0, description="noise seed of predictions, stored in the run for predict and export")
    solver: Literal[SOLVERS] = Field(
        "euler",
        description="ODE solver stored in the run for predict and export; midpoint/heun: 2 network calls per step; "
        "shortcut: needs --shortcut-fraction > 0",
    )
    tile_size: int | None = Field(
        None,
        ge=16,
        description=f"tile edge in pixels stored in the run for predict and export (default: {TILE_SIZE}; for "
        "--architecture reference the training crop, the window its attention was trained on)",
    )
    overlap: int | None = Field(
        None,
        ge=0,
        description=f"overlap of neighbouring tiles in pixels stored in the run (default: {OVERLAP}; for "
        "--architecture reference a quarter of the tile)",
    )

    mmse: Literal[MMSE_ESTIMATES] = Field(
        "samples",
        description="how predict and export make the MMSE: samples (the mean of the K samples) or anchor (the "
        "velocity at x = 0, t = 0, one network evaluation; runs trained with --mean-anchor-fraction "
        "take anchor unless this is given)",
    )

    sample_noise: Literal[SAMPLE_NOISES] | None = Field(
        None,
        description="the K samples' starting noise: independent draws, or antithetic pairs (x0, -x0) whose mean "
        "varies less (a higher MMSE PSNR at the same K, see the Dehaze guide) (default: antithetic for a new "
        "HazeMatching run; a resume or --init-from keeps that run's; absent from a config.json: independent, as "
        "runs of earlier releases sample)",
    )

    @model_serializer(mode="wrap")
    def _unset_tiling_is_absent(self, handler):
        # runs that leave tiling (and the MMSE) to the package defaults keep the config.json of earlier releases
        data = handler(self)
        for key in ("tile_size", "overlap"):
            if data.get(key) is None:
                data.pop(key, None)
        if data.get("mmse") == "samples":
            data.pop("mmse", None)
        if data.get("sample_noise") in (None, "independent"):  # what an earlier release's run samples with
            data.pop("sample_noise", None)
        return data


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="folder with train/ (and val/) sub-folders, or one split folder")
    output_dir: Path = Field(description="run directory: weights, config.json, checkpoints, logs, sample grids")
    val_data: Path | None = Field(
        None,
        description="validation folder (default: DATA/val when it exists, else a held-out --val-fraction of the "
        "training pairs)",
    )
    val_fraction: float = Field(
        0.15, gt=0.0, lt=1.0, description="held-out fraction when there is no validation folder"
    )
    objective: Literal["cfm", "mse"] = Field(
        "cfm", description="cfm: HazeMatching; mse: U-Net point-predictor baseline"
    )
    max_steps: int = Field(10000, ge=1, description="optimizer steps in total")
    batch_size: int = Field(16, ge=1, description="crops per process per micro-step")
    crop_size: int = Field(128, ge=16, description="random square crop size (multiple of the U-Net stride)")
    lr: float = Field(
        1e-4, gt=0.0, description="learning rate of AdamW (constant after the warm-up, as in the reference code)"
    )
    lr_warmup_steps: int = Field(0, ge=0, description="steps of linear learning-rate warm-up")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0.0, description="gradients are clipped to this global norm")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="micro-steps per optimizer step (effective batch = batch x processes x this)"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] | None = Field(
        None, description="no, fp16 or bf16 (default: what the accelerate config says; no without accelerate launch)"
    )
    seed: int = Field(0, ge=0, description="seed of weights, crops and noise: the same seed and data give the same run")
    checkpointing_steps: int = Field(1000, ge=1, description="save a resumable checkpoint every this many steps")
    checkpoints_total_limit: int | None = Field(
        None, ge=1, description="keep only the newest this many checkpoints (default: keep all)"
    )
    resume_from_checkpoint: str | None = Field(
        None, description="continue a run: 'latest' (the newest checkpoint in --output-dir) or a checkpoint folder"
    )
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="decay of the weight average saved as the model")
    validation_steps: int = Field(
        500, ge=0, description="validation loss and sample grid every this many steps (0: never)"
    )
    validation_crops: int = Field(8, ge=1, description="validation crops in the loss and the sample grid")
    time_grid_points: int = Field(0, ge=0, description="0: t ~ U[0,1); G: t on linspace(0, 1, G) as the reference code")
    mean_anchor_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="fraction of the training items given x = 0 at t = 0 with the target image as velocity: the "
        "network's v(0, 0, c) is then a point prediction of the posterior mean (the MMSE in one evaluation)",
    )
    shortcut_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="shortcut models: the fraction of each batch trained for self-consistency of large steps "
        "(0: plain flow matching; 0.25 as in the paper); adds step-size conditioning, sample with --solver shortcut",
    )
    init_from: Path | None = Field(
        None,
        description="start from this run's weights and normalisation (fine-tuning, e.g. with --shortcut-fraction); "
        "the model flags must match that run's",
    )
    augment: bool = Field(
        True, description="random flips and 90-degree rotations of the training crops (--no-augment: off)"
    )
    num_workers: int | None = Field(
        None,
        ge=0,
        description="data-loading worker processes per training process (default: 4 on a GPU, 0 on a CPU, where "
        "workers compete with the model for cores)",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the network for training: auto = on when training on a CUDA GPU without DeepSpeed",
    )
    log_steps: int = Field(10, ge=1, description="log loss, learning rate and samples/s every this many steps")
    model: Architecture = Field(default_factory=UNetArchitecture)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)

    @field_validator("time_grid_points")
    @classmethod
    def _grid(cls, value: int) -> int:
        if value == 1:
            raise ValueError("must be 0 (continuous t) or >= 2")
        return value

    @field_serializer("model")
    def _model_flags(self, model) -> dict:
        return model.flags()

    @model_validator(mode="after")
    def _combinations(self):
        if self.model.kind == "reference" and (self.objective != "cfm" or self.shortcut_fraction > 0):
            raise ValueError(
                "--architecture reference is the paper's flow-matching network: it needs --objective cfm and no "
                "--shortcut-fraction (use --architecture unet for those)"
            )
        derived = {"step_conditioning": self.shortcut_fraction > 0} if self.model.kind == "unet" else {}
        if self.model.kind == "unet":
            derived["time_conditioning"] = self.objective == "cfm"
        # set without marking the field as given (``--init-from`` inherits the fields that were not)
        self.__dict__["model"] = self.model.model_copy(update=derived)
        if self.mean_anchor_fraction > 0 and "mmse" not in self.sampler.model_fields_set:
            # a network trained at the anchor predicts the posterior mean there: its MMSE by default
            self.__dict__["sampler"] = self.sampler.model_copy(update={"mmse": "anchor"})
        if self.objective == "cfm" and "sample_noise" not in self.sampler.model_fields_set:
            # the samples' mean is a better MMSE at the same cost (scripts/benchmark_fidelity.py); not
            # marked as given, so that a resume keeps the resumed run's (``trainer.with_resumed_sample_noise``)
            sampler = self.sampler.model_copy(update={"sample_noise": "antithetic"})
            sampler.__pydantic_fields_set__.discard("sample_noise")
            self.__dict__["sampler"] = sampler
        if self.time_grid_points >= 2 and "steps" not in self.sampler.model_fields_set:
            # a network trained on G time points is sampled on them: Euler with G - 1 steps
            self.__dict__["sampler"] = self.sampler.model_copy(update={"steps": self.time_grid_points - 1})
        if self.model.kind == "reference":
            # global attention: predict in windows of the size it was trained on, a quarter overlapping
            tile = self.sampler.tile_size or self.crop_size
            overlap = self.sampler.overlap if self.sampler.overlap is not None else tile // 4
            self.__dict__["sampler"] = self.sampler.model_copy(update={"tile_size": tile, "overlap": overlap})
        if self.crop_size % self.model.stride:
            raise ValueError(
                f"--crop-size {self.crop_size} must be a multiple of the U-Net stride {self.model.stride} "
                f"(2 ** (number of --channel-mults - 1))"
            )
        if self.checkpoints_total_limit is not None and self.checkpointing_steps > self.max_steps:
            raise ValueError(
                f"--checkpoints-total-limit is set but --checkpointing-steps ({self.checkpointing_steps}) > "
                f"--max-steps ({self.max_steps}): no checkpoint would ever be written"
            )
        if self.mean_anchor_fraction > 0 and self.objective != "cfm":
            raise ValueError("--mean-anchor-fraction needs --objective cfm (the U-Net baseline has no velocity)")
        if self.sampler.mmse != "samples" and self.objective != "cfm":
            raise ValueError("--sampler-mmse anchor needs --objective cfm (the U-Net baseline predicts one image)")
        if self.shortcut_fraction > 0 and self.objective != "cfm":
            raise ValueError("--shortcut-fraction needs --objective cfm (the U-Net baseline takes no steps)")
        if self.sampler.solver == "shortcut" and self.shortcut_fraction == 0:
            raise ValueError("--sampler-solver shortcut needs --shortcut-fraction > 0 (a step-conditioned network)")
        if self.lr_warmup_steps >= self.max_steps:
            raise ValueError(f"--lr-warmup-steps ({self.lr_warmup_steps}) must be < --max-steps ({self.max_steps})")
        return self


def read_config_file(path: Path) -> dict:
    """Fields from a YAML or JSON file (a run's config.json works too: its 'training' block is used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data.get("training", data)


def format_validation_error(error: ValidationError) -> str:
    lines = ["invalid training configuration:"]
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if loc[:1] == ["model"] and len(loc) >= 2 and loc[1] in KINDS:  # the network kind's own fields
            kind, loc = loc[1], loc[2:]
            if item["type"] == "extra_forbidden":
                others = [name for name, network in KINDS.items() if loc and loc[0] in network.model_fields]
                message = f"not a setting of --architecture {kind}" + (
                    f" (it belongs to --architecture {' / '.join(others)})" if others else ""
                )
        where = ".".join(loc)
        lines.append(f"  --{where.replace('_', '-')}: {message}" if where else f"  {message}")
    return "\n".join(lines)

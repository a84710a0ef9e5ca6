"""Inference settings, resolved in one place for every entry point (predict, the experiment runner,
evaluate, calibrate, export): explicit options win over the run's recommended solver and steps
(``hazematching tune``), which win over the run's stored sampler defaults, which win over the package
defaults (``SamplerConfig`` for the sampler, ``core.tiles`` for tiling).

Typed, each field's bounds and help declared once: ``SettingsRequest`` (what a caller asks for; None:
not given) resolves into ``InferenceSettings`` (what changes the numbers); ``SpeedOptions`` change
only how fast. The ``hazematching`` flags are generated from them (``hazematching.commands``)."""

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hazematching.core.sampler import MMSE_ESTIMATES, SAMPLE_NOISES, SOLVERS, evaluations_per_step
from hazematching.core.tiles import OVERLAP, TILE_SIZE
from hazematching.run import RunDescription

# How the experiment runner seeds each plane (``predict --noise``); changes the numbers, so it is
# recorded with the other settings in the manifest.
NOISE_KEYING = {
    "per-plane": "each plane's noise is keyed on (seed, input file name, plane index)",
    "package": "every plane uses the seed itself, as an exported bioimage.io package does: a 2D image then gives "
    "the package's numbers",
}
DEFAULT_NOISE = "per-plane"

# How much quality `hazematching tune`'s recommended setting may give up against Euler-20 at the same K:
# the MMSE's PSNR (dB) and MicroMS3IM, and one posterior sample's FSIM and GMSD.
PSNR_TOLERANCE, MS3IM_TOLERANCE, SAMPLE_TOLERANCE = 0.2, 0.01, 0.01

# Speed defaults (``inference.speed`` applies them; the flags' help quotes them).
# On a CPU, compiling the U-Net takes ~5 s (inductor cache warm) to ~35 s (cold) and saves only
# ~4 % per call (~10 ms on a 304^2 tile, 2 cores; the eager channels_last network already runs
# fused layer norms): worth it from a few thousand network evaluations on.
CPU_COMPILE_MIN_EVALUATIONS = 3000
# On an H100 (bf16, 8 tiles x 4 samples of 304^2 per call), compiling costs ~20 s (cold cache) and cuts
# a call from ~12 ms to ~2.3 ms: it pays back from ~2000 evaluations (a 1024^2 image at K = 8,
# N = 20 is 320), i.e. for jobs of about 6 such images or more. Smaller jobs run eagerly.
GPU_COMPILE_MIN_EVALUATIONS = 2000
IMAGE_EVALUATIONS = 320  # network evaluations of a 1024^2 image at K = 8, N = 20 on a GPU
# Images per network call on a GPU with at least this much memory: 16 tiles x 8 samples of 304^2
# measured 0.649 s per 1024^2 image against 0.745 s for 8 x 4 (H100); smaller GPUs keep 8 x 4.
LARGE_GPU_BYTES = 40 * 2**30
# Tiles per network call by default: 1 on a CPU (bigger batches are slower per tile), 8 or 16 on a GPU.
CPU_TILES_PER_CALL, GPU_TILES_PER_CALL, LARGE_GPU_TILES_PER_CALL = 1, 8, 16
# Images (tiles x samples) per network call the sampler aims at on a GPU.
GPU_IMAGES_PER_CALL, LARGE_GPU_IMAGES_PER_CALL = 32, 128

# The bounds of the settings, shared by the request and the resolved value.
Samples = Annotated[int, Field(ge=1)]
Steps = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0)]
Solver = Literal[SOLVERS]
TileSize = Annotated[int, Field(ge=16)]
Overlap = Annotated[int, Field(ge=0)]
Mmse = Literal[MMSE_ESTIMATES]
SampleNoise = Literal[SAMPLE_NOISES]


class SettingError(ValueError):
    """An invalid setting value (``--steps 0``): the CLI exits with status 2, as argparse does."""


def refuse_point_predictor_outputs(objective: str, keep_samples: bool, calibrated: bool, **given) -> None:
    """A U-Net run (objective ``mse``) predicts one image: asking for its samples, a calibrated std or
    any other sampler option is an invalid setting (``SettingError``, exit status 2), named in one line
    with every such option given. ``given``: further options by name (``samples_per_call=4``; None or
    False: not given), e.g. a request's sampler fields or the runner's ``--noise``."""
    if objective != "mse":
        return
    named = [("--save-samples", keep_samples), ("--calibrated", calibrated)]
    named += [(f"--{name.replace('_', '-')} {value}", value) for name, value in given.items()]
    flags = [flag for flag, value in named if value is not None and value is not False]
    if flags:
        raise SettingError(
            f"{', '.join(flags)}: this is a U-Net baseline run, which predicts one image (no samples, no std, no "
            "anchor); these options apply to HazeMatching runs: leave them out"
        )


def setting_error(exc: ValidationError) -> SettingError:
    """One line naming each invalid value by its flag: ``--steps 0: Input should be ...``."""
    problems = []
    for error in exc.errors():
        name = next((str(part) for part in reversed(error["loc"]) if isinstance(part, str)), "value")
        problems.append(f"--{name.replace('_', '-')} {error['input']!r}: {error['msg']}")
    return SettingError("; ".join(problems))


class InferenceSettings(BaseModel):
    """What changes the numbers of a prediction: K samples of an N-step solve from a seed, tiled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: Samples
    steps: Steps
    seed: Seed
    solver: Solver
    tile_size: TileSize
    overlap: Overlap
    mmse: Mmse = "samples"  # the MMSE: the mean of the samples, or v(0, 0, c) ("anchor")
    sample_noise: SampleNoise = "independent"  # the samples' x0: independent, or antithetic pairs


class SettingsRequest(BaseModel):
    """The settings a caller asks for (None: not given), resolved against a run by ``resolve``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: Samples | None = Field(
        None, description="posterior samples K: the std, and the MMSE unless --mmse anchor (default: the run's)"
    )
    steps: Steps | None = Field(
        None, description="steps N of the ODE solver per sample (default: the run's tuned setting, else the run's)"
    )
    solver: Solver | None = Field(
        None,
        description="ODE solver; midpoint/heun use 2 network calls per step, shortcut needs a run trained with "
        "--shortcut-fraction (default: the run's tuned setting, else the run's)",
    )
    seed: Seed | None = Field(None, description="noise seed (default: the run's)")
    tile_size: TileSize | None = Field(
        None,
        description="larger images are processed in overlapping tiles of this edge in pixels (memory ~ tile^2 x "
        f"tiles per call; default: the run's, else {TILE_SIZE}; the paper's network: the crop it was trained on)",
    )
    overlap: Overlap | None = Field(
        None,
        description=f"overlap of neighbouring tiles in pixels (default: the run's, else {OVERLAP}; the paper's "
        "network: a quarter tile)",
    )

    mmse: Mmse | None = Field(
        None,
        description="samples: the MMSE is the mean of the K samples; anchor: the network's velocity at x = 0, t = 0, "
        "a posterior-mean prediction in one network evaluation (trained by --mean-anchor-fraction); the std is the "
        "samples' either way (default: the run's)",
    )
    sample_noise: SampleNoise | None = Field(
        None,
        description="the K samples' starting noise: independent draws, or antithetic pairs (sample 2j+1 starts "
        "from -x0 of sample 2j; with an odd K the last is unpaired): their mean varies less, a higher MMSE PSNR in our "
        "benchmarks (default: the run's)",
    )

    # The fields whose help a qualifier extends (export: "... inside the package").
    QUALIFIED: ClassVar[tuple[str, ...]] = ("samples", "steps", "solver", "seed", "tile_size")
    # The fields that only a HazeMatching run uses (a U-Net run refuses them).
    SAMPLER: ClassVar[tuple[str, ...]] = ("samples", "steps", "solver", "seed", "mmse", "sample_noise")

    def sampler_options(self) -> dict:
        """The sampler fields given (not None), by name."""
        return {name: getattr(self, name) for name in self.SAMPLER if getattr(self, name) is not None}

    def resolve(self, description: RunDescription) -> InferenceSettings:
        """Explicit values over the run's tuned solver and steps (used only when neither is given)
        over the run's sampler defaults over the package defaults."""
        if description.objective != "cfm":  # a sampler value would be silently ignored
            refuse_point_predictor_outputs(description.objective, False, False, **self.sampler_options())
        stored = description.sampler
        solver, steps = self.solver, self.steps
        recommended = description.recommended_sampler
        if recommended is not None and solver is None and steps is None:  # solver and steps go together
            solver, steps = recommended.solver, recommended.steps
        try:
            return InferenceSettings(
                samples=stored.samples if self.samples is None else self.samples,
                steps=stored.steps if steps is None else steps,
                seed=stored.seed if self.seed is None else self.seed,
                solver=solver or stored.solver,
                tile_size=self.tile_size or stored.tile_size or TILE_SIZE,
                overlap=next(value for value in (self.overlap, stored.overlap, OVERLAP) if value is not None),
                mmse=self.mmse or (recommended.mmse if recommended is not None else None) or stored.mmse,
                sample_noise=self.sample_noise or stored.sample_noise or "independent",  # absent: independent
            )
        except ValidationError as exc:
            raise setting_error(exc) from None


def describe_settings(description: RunDescription, settings: InferenceSettings) -> str:
    """One line saying what makes the numbers of a prediction (its summary; the manifest has them as
    fields): for a HazeMatching run K, noise, solver, steps and where they came from, the seed and how
    the MMSE is made; for a U-Net run its one prediction; the tiles for both."""
    tiles = f"tiles of {settings.tile_size} px overlapping {settings.overlap} px"
    if description.objective != "cfm":
        return f"U-Net point prediction; {tiles}"
    recommended = description.recommended_sampler
    tuned = recommended is not None and (recommended.solver, recommended.steps) == (settings.solver, settings.steps)
    nfe = settings.steps * evaluations_per_step(settings.solver)
    mmse = "the network's anchor v(0, 0, c), 1 evaluation" if settings.mmse == "anchor" else "the mean of the samples"
    return (
        f"K = {settings.samples} posterior samples ({settings.sample_noise} noise), {settings.solver} "
        f"{settings.steps} steps{' (tune recommended)' if tuned else ''}, {nfe} evaluations each, seed "
        f"{settings.seed}; MMSE: {mmse}; {tiles}"
    )


class SpeedOptions(BaseModel):
    """What changes only how fast a prediction runs (up to floating-point rounding), and where."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tiles_per_call: int | None = Field(
        None,
        ge=1,
        json_schema_extra={"deprecated_flags": ("--batch-size",)},
        description=f"tiles per network call (default: {CPU_TILES_PER_CALL} on CPU, {GPU_TILES_PER_CALL} on a GPU, "
        f"{LARGE_GPU_TILES_PER_CALL} on one with >= {LARGE_GPU_BYTES // 2**30} GiB)",
    )
    samples_per_call: int | None = Field(
        None,
        ge=1,
        json_schema_extra={"deprecated_flags": ("--sample-batch",)},
        description=f"samples per network call (default: 1 on CPU; on GPU enough for ~{GPU_IMAGES_PER_CALL} images "
        f"per call, ~{LARGE_GPU_IMAGES_PER_CALL} on one with >= {LARGE_GPU_BYTES // 2**30} GiB)",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the network (auto: when the job is large enough to pay the compile time back: "
        f"on a GPU from ~{round(GPU_COMPILE_MIN_EVALUATIONS / IMAGE_EVALUATIONS)} images of 1024^2 at K = 8, N = 20, "
        f"on a CPU from ~{CPU_COMPILE_MIN_EVALUATIONS} network calls)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="network precision (auto: bf16 autocast on GPUs that support it, else fp32)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the network runs; auto: the GPU when there is one (default: auto)"
    )


def resolve_settings(
    description: RunDescription,
    samples: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    solver: str | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    mmse: str | None = None,
    sample_noise: str | None = None,
) -> InferenceSettings:
    """``SettingsRequest(...).resolve(description)`` for keyword values (None, or an empty solver or
    a zero tile size: not given)."""
    if solver:
        try:
            evaluations_per_step(solver)
        except ValueError as exc:  # "unknown solver ...: expected one of ..."
            raise SettingError(str(exc)) from None
    try:
        request = SettingsRequest(
            samples=samples,
            steps=steps,
            seed=seed,
            solver=solver or None,
            tile_size=tile_size or None,
            overlap=overlap,
            mmse=mmse or None,
            sample_noise=sample_noise or None,
        )
    except ValidationError as exc:
        raise setting_error(exc) from None
    return request.resolve(description)


def resolve_options(description: RunDescription, options: dict) -> InferenceSettings:
    """``resolve_settings`` for a dict of predict options (the speed-only ones are ignored)."""
    return resolve_settings(description, **{key: options.get(key) for key in SettingsRequest.model_fields})


def speed_of(options: dict) -> dict:
    """The predict options that are not settings (speed: batches, compile, precision), as given."""
    return {key: value for key, value in options.items() if key not in SettingsRequest.model_fields}

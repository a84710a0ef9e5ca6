"""Inference settings, resolved in one place for every entry point (predict, the experiment runner,
evaluate, calibrate, export): explicit options win over the run's recommended solver and steps
(``hazematching tune``), which win over the run's stored sampler defaults, which win over the package
defaults (``SamplerConfig`` for the sampler, ``core.tiles`` for tiling)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hazematching.core.sampler import SOLVERS, evaluations_per_step
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

# How much quality `hazematching tune`'s recommended setting may give up against Euler-20 at the same K.
PSNR_TOLERANCE, MS3IM_TOLERANCE = 0.2, 0.01


class SettingError(ValueError):
    """An invalid setting value (``--steps 0``): the CLI exits with status 2, as argparse does."""


class InferenceSettings(BaseModel):
    """What changes the numbers of a prediction: K samples of an N-step solve from a seed, tiled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: int = Field(ge=1)
    steps: int = Field(ge=1)
    seed: int = Field(ge=0)
    solver: Literal[SOLVERS]
    tile_size: int = Field(ge=16)
    overlap: int = Field(ge=0)


def resolve_settings(
    description: RunDescription,
    samples: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    solver: str | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
) -> InferenceSettings:
    """Explicit values (None: not given) over the run's tuned solver and steps (used only when neither
    is given) over the run's sampler defaults over the package defaults."""
    stored = description.sampler
    recommended = description.recommended_sampler
    if recommended is not None and solver is None and steps is None:  # solver and steps go together
        solver, steps = recommended.solver, recommended.steps
    solver = solver or stored.solver
    try:
        evaluations_per_step(solver)
    except ValueError as exc:  # "unknown solver ...: expected one of ..."
        raise SettingError(str(exc)) from None
    try:
        return InferenceSettings(
            samples=stored.samples if samples is None else samples,
            steps=stored.steps if steps is None else steps,
            seed=stored.seed if seed is None else seed,
            solver=solver,
            tile_size=tile_size or stored.tile_size or TILE_SIZE,
            overlap=next(value for value in (overlap, stored.overlap, OVERLAP) if value is not None),
        )
    except ValidationError as exc:
        problems = [f"--{str(e['loc'][0]).replace('_', '-')} {e['input']!r}: {e['msg']}" for e in exc.errors()]
        raise SettingError("; ".join(problems)) from None


def resolve_options(description: RunDescription, options: dict) -> InferenceSettings:
    """``resolve_settings`` for a dict of predict options (the speed-only ones are ignored)."""
    return resolve_settings(description, **{key: options.get(key) for key in InferenceSettings.model_fields})

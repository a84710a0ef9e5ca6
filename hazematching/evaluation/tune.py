"""Per-model sampler settings: quality against network evaluations on held-out pairs.

For each K and each (solver, steps) of a grid, the MMSE's PSNR and MicroMS3IM, one sample's PSNR,
FSIM and GMSD and the calibration slope (RMSE ~ a * RMV) are measured on held-out pairs with a fixed
seed. Two settings are recommended, each by its own quality:

- the MMSE: the network's anchor estimate v(0, 0, c) (one evaluation, see
  ``core.sampler.ODESampler.anchor_mean``) is measured against the mean of K samples of the reference
  (Euler with 20 steps, the paper's sampler); ``anchor`` is recommended when neither its
  range-invariant PSNR (structure) nor its absolute PSNR (intensities as they are, which the affine
  fit of the first would hide) is more than ``psnr_tolerance`` dB below the samples' mean's, else
  ``samples``;
- the samples (what the std and the posterior draws use): at a K, the setting with the fewest network
  evaluations per sample whose one sample's FSIM and GMSD are within ``sample_tolerance`` of the
  reference's and whose samples' mean is within ``psnr_tolerance`` dB PSNR and ``ms3im_tolerance``
  MicroMS3IM of it (so that ``--mmse samples`` stays good with the same setting): PSNR alone would
  reward the blur of a two-step solve. On images too small for MicroMS3IM
  (``metrics.micro_ms3im_problem``; the paper's 128 px crops) that structural guard is the MMSE's
  MS-SSIM (scales reduced to the size) with the same tolerance, and the table and the stored
  recommendation say so.
"""

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hazematching.core import SOLVERS, evaluations_per_step
from hazematching.data.io import DataError, read_split
from hazematching.evaluation.calibration import calibration_curve, fit_calibration
from hazematching.evaluation.metrics import (
    fsim,
    gmsd,
    micro_ms3im,
    micro_ms3im_problem,
    ms_ssim,
    psnr,
    range_invariant_psnr,
)
from hazematching.inference.predict import predict_array
from hazematching.run import LoadedRun, SamplerRecommendation
from hazematching.settings import MS3IM_TOLERANCE, PSNR_TOLERANCE, SAMPLE_TOLERANCE, SettingError

REFERENCE = ("euler", 20)
GRID = (
    ("euler", 20), ("euler", 10), ("euler", 5), ("euler", 3), ("euler", 2),
    ("midpoint", 5), ("midpoint", 3), ("midpoint", 2), ("midpoint", 1),
    ("heun", 5), ("heun", 3), ("heun", 2), ("heun", 1),
)  # fmt: skip
SHORTCUT_GRID = (("shortcut", 4), ("shortcut", 2), ("shortcut", 1))  # added for step-conditioned runs


@dataclass
class TuneRow:
    samples: int
    solver: str
    steps: int
    evaluations: int  # network evaluations per sample
    psnr: float  # MMSE, range-invariant, mean over pairs
    ms3im: float | None  # MMSE MicroMS3IM (None: images too small, see micro_ms3im_problem)
    sample_psnr: float  # one sample's PSNR
    calibration_slope: float  # a of RMSE ~ a * RMV + b (1 = calibrated as sampled)
    seconds: float
    sample_fsim: float = float("nan")  # one sample's FSIM (higher is better)
    sample_gmsd: float = float("nan")  # one sample's GMSD (lower is better)
    ms_ssim: float = float("nan")  # MMSE MS-SSIM: the structural guard where MicroMS3IM cannot be computed
    absolute_psnr: float = float("nan")  # MMSE PSNR without the affine fit: intensities as they are


@dataclass
class MmseRow:
    """The anchor MMSE on the same pairs (its samples' std is not part of it)."""

    psnr: float
    ms_ssim: float
    ms3im: float | None
    seconds: float
    evaluations: int = 1  # network evaluations per pixel
    absolute_psnr: float = float("nan")  # without the affine fit


def measure_anchor(run: LoadedRun, data_dir: Path, seed: int = 0, **predict_options) -> MmseRow:
    """The anchor MMSE v(0, 0, c) of every pair (one sample of one step is drawn beside it, unused)."""
    tic = time.perf_counter()
    pairs = read_split(Path(data_dir))
    with_ms3im = micro_ms3im_problem([p.target.shape for p in pairs], [p.name for p in pairs]) is None
    psnrs, ssims, ms3ims, absolute = [], [], [], []
    for pair in pairs:
        mean = predict_array(
            run, pair.input, samples=1, steps=1, seed=seed, mmse="anchor", progress=False, **predict_options
        ).mean
        psnrs.append(range_invariant_psnr(mean, pair.target))
        absolute.append(psnr(mean, pair.target))
        ssims.append(ms_ssim(mean, pair.target))
        if with_ms3im:
            ms3ims.append(micro_ms3im(mean, pair.target))
    ms3im = float(np.mean(ms3ims)) if with_ms3im else None
    seconds = time.perf_counter() - tic
    return MmseRow(float(np.mean(psnrs)), float(np.mean(ssims)), ms3im, seconds, absolute_psnr=float(np.mean(absolute)))


def recommend_mmse(anchor: MmseRow, reference: TuneRow, psnr_tolerance: float = PSNR_TOLERANCE) -> str:
    """``anchor`` when neither its range-invariant nor its absolute PSNR (where measured) is more than
    ``psnr_tolerance`` dB below the reference's samples' mean's, else ``samples``."""
    absolute_ok = np.isnan(reference.absolute_psnr) or anchor.absolute_psnr >= reference.absolute_psnr - psnr_tolerance
    return "anchor" if anchor.psnr >= reference.psnr - psnr_tolerance and absolute_ok else "samples"


def check_tolerances(**tolerances: float) -> None:
    """Each tolerance a finite number >= 0 (a negative one would reject even the reference)."""
    for name, value in tolerances.items():
        if not (np.isfinite(value) and value >= 0):
            raise SettingError(f"--{name.replace('_', '-')} {value}: must be a finite number >= 0")


def parse_grid(text: str) -> tuple[tuple[str, int], ...]:
    """'euler:20,heun:3' -> (('euler', 20), ('heun', 3)); the reference Euler-20 is always added."""
    grid = []
    for item in text.split(","):
        solver, _, steps = item.strip().partition(":")
        if solver not in SOLVERS or not steps.isdigit() or int(steps) < 1:
            raise SettingError(f"--settings item {item!r}: expected SOLVER:STEPS with SOLVER in {', '.join(SOLVERS)}")
        grid.append((solver, int(steps)))
    return tuple(dict.fromkeys([REFERENCE, *grid]))


def measure(
    run: LoadedRun,
    data_dir: Path,
    samples: tuple[int, ...],
    grid: tuple[tuple[str, int], ...] = GRID,
    seed: int = 0,
    progress: bool = True,
    **predict_options,
) -> list[TuneRow]:
    """The table: one row per (K, solver, steps), every row on the same pairs with the same seed."""
    if not samples or min(samples) < 2:
        raise SettingError(
            f"--samples {','.join(map(str, samples))}: each K must be at least 2 (the std needs two samples)"
        )
    pairs = read_split(Path(data_dir))
    if not pairs:
        raise DataError(f"{data_dir}: no image pairs to tune on")
    with_ms3im = micro_ms3im_problem([p.target.shape for p in pairs], [p.name for p in pairs]) is None
    rows = []
    jobs = [(k, solver, steps) for k in samples for solver, steps in grid]
    for k, solver, steps in tqdm(jobs, desc="tuning", disable=not progress):
        tic = time.perf_counter()
        psnrs, ms3ims, ssims, single, stds, errors, fsims, gmsds, absolute = [], [], [], [], [], [], [], [], []
        for pair in pairs:
            options = dict(samples=k, steps=steps, seed=seed, solver=solver, job_planes=len(pairs) * len(jobs))
            options["mmse"] = "samples"  # the rows compare samples' settings; the anchor is measured apart
            pred = predict_array(run, pair.input, keep_samples=True, progress=False, **options, **predict_options)
            psnrs.append(range_invariant_psnr(pred.mean, pair.target))
            absolute.append(psnr(pred.mean, pair.target))
            if with_ms3im:
                ms3ims.append(micro_ms3im(pred.mean, pair.target))
            ssims.append(ms_ssim(pred.mean, pair.target))
            single.append(range_invariant_psnr(pred.samples[0], pair.target))
            fsims.append(fsim(pred.samples[0], pair.target))
            gmsds.append(gmsd(pred.samples[0], pair.target))
            stds.append(pred.std.ravel())
            errors.append((pred.mean - pair.target).ravel())
        slope, _ = fit_calibration(calibration_curve(np.concatenate(stds), np.concatenate(errors)))
        nfe = steps * evaluations_per_step(solver)
        ms3im = float(np.mean(ms3ims)) if with_ms3im else None
        quality = (float(np.mean(psnrs)), ms3im, float(np.mean(single)), slope)
        seconds = time.perf_counter() - tic
        sample_quality = (float(np.mean(fsims)), float(np.mean(gmsds)), float(np.mean(ssims)))
        rows.append(TuneRow(k, solver, steps, nfe, *quality, seconds, *sample_quality, float(np.mean(absolute))))
    return rows


def recommend(
    rows: list[TuneRow],
    samples: int,
    psnr_tolerance: float = PSNR_TOLERANCE,
    ms3im_tolerance: float = MS3IM_TOLERANCE,
    reference_setting: tuple[str, int] = REFERENCE,
    sample_tolerance: float = SAMPLE_TOLERANCE,
) -> tuple[TuneRow, TuneRow]:
    """(recommended row, reference row) at K = ``samples``: fewest evaluations within the tolerances
    (ties: the higher PSNR): one sample's FSIM and GMSD (where measured), and the samples' mean's PSNR
    and structure (MicroMS3IM, or MS-SSIM where it was not computed)."""
    check_tolerances(psnr_tolerance=psnr_tolerance, ms3im_tolerance=ms3im_tolerance, sample_tolerance=sample_tolerance)
    at_k = [r for r in rows if r.samples == samples]
    reference = next(r for r in at_k if (r.solver, r.steps) == reference_setting)
    guard = structural_guard(at_k)
    psnr_floor, guard_floor = reference.psnr - psnr_tolerance, getattr(reference, guard) - ms3im_tolerance

    def good_samples(r: TuneRow) -> bool:  # NaN: not measured
        fsim_ok = np.isnan(reference.sample_fsim) or r.sample_fsim >= reference.sample_fsim - sample_tolerance
        return fsim_ok and (
            np.isnan(reference.sample_gmsd) or r.sample_gmsd <= reference.sample_gmsd + sample_tolerance
        )

    def good_mmse(r: TuneRow) -> bool:
        return r.psnr >= psnr_floor and getattr(r, guard) >= guard_floor

    good = [r for r in at_k if good_samples(r) and good_mmse(r)]
    return min(good, key=lambda r: (r.evaluations, -r.psnr)), reference


def structural_guard(rows: list[TuneRow]) -> str:
    """The TuneRow field the rule checks besides PSNR: ``ms3im`` when measured, else ``ms_ssim``."""
    return "ms3im" if all(r.ms3im is not None for r in rows) else "ms_ssim"


def recommendation(
    best: TuneRow, reference: TuneRow, data_dir: Path, seed: int, anchor: MmseRow | None = None, mmse: str | None = None
) -> SamplerRecommendation:
    return SamplerRecommendation(
        mmse=mmse,
        mmse_psnr_delta=None if anchor is None else anchor.psnr - reference.psnr,
        mmse_absolute_psnr_delta=None if anchor is None else anchor.absolute_psnr - reference.absolute_psnr,
        sample_fsim_delta=None if np.isnan(best.sample_fsim) else best.sample_fsim - reference.sample_fsim,
        sample_gmsd_delta=None if np.isnan(best.sample_gmsd) else best.sample_gmsd - reference.sample_gmsd,
        solver=best.solver,
        steps=best.steps,
        samples=best.samples,
        psnr_delta=best.psnr - reference.psnr,
        ms3im_delta=None if best.ms3im is None else best.ms3im - reference.ms3im,
        ms_ssim_delta=best.ms_ssim - reference.ms_ssim,
        speedup=reference.evaluations / best.evaluations,
        reference=f"{reference.solver}:{reference.steps}",
        data=str(data_dir),
        seed=seed,
    )


def markdown(rows: list[TuneRow], chosen: TuneRow | None = None, reference: tuple[str, int] = REFERENCE) -> str:
    lines = [
        "| K | solver | steps | NFE | MMSE PSNR (dB) | Δ PSNR | MicroMS3IM | MS-SSIM | sample PSNR | sample FSIM "
        "| sample GMSD | calibration slope | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = next(x for x in rows if x.samples == r.samples and (x.solver, x.steps) == reference)
        mark = "**" if r is chosen else ""
        lines.append(
            f"| {r.samples} | {mark}{r.solver}{mark} | {r.steps} | {r.evaluations} | {r.psnr:.2f} | "
            f"{r.psnr - ref.psnr:+.2f} | {'n/a' if r.ms3im is None else f'{r.ms3im:.3f}'} | {r.ms_ssim:.3f} | "
            f"{r.sample_psnr:.2f} | {r.sample_fsim:.3f} | "
            f"{r.sample_gmsd:.3f} | {r.calibration_slope:.2f} | {r.seconds:.1f} |"
        )
    if structural_guard(rows) == "ms_ssim":
        lines += ["", "MicroMS3IM n/a: the images are smaller than it needs; the rule used the MMSE's MS-SSIM instead."]
    return "\n".join(lines)


def mmse_markdown(anchor: MmseRow, reference: TuneRow, mmse: str) -> str:
    """The MMSE estimates side by side: the reference's samples' mean and the anchor."""
    ms3im = "n/a" if anchor.ms3im is None else f"{anchor.ms3im:.3f}"
    ref_ms3im = "n/a" if reference.ms3im is None else f"{reference.ms3im:.3f}"
    nfe = reference.samples * reference.evaluations
    bold = "**" if mmse == "samples" else ""
    return "\n".join(
        [
            "| MMSE | NFE per pixel | PSNR (dB) | Δ PSNR | absolute PSNR (dB) | Δ absolute PSNR | MicroMS3IM "
            "| MS-SSIM |",
            "|---|---|---|---|---|---|---|---|",
            f"| {bold}mean of K = {reference.samples} {reference.solver}-{reference.steps} samples{bold} | {nfe} | "
            f"{reference.psnr:.2f} | 0 | {reference.absolute_psnr:.2f} | 0 | {ref_ms3im} | {reference.ms_ssim:.3f} |",
            f"| {'**anchor**' if mmse == 'anchor' else 'anchor'} v(0, 0, c) | 1 | {anchor.psnr:.2f} | "
            f"{anchor.psnr - reference.psnr:+.2f} | {anchor.absolute_psnr:.2f} | "
            f"{anchor.absolute_psnr - reference.absolute_psnr:+.2f} | {ms3im} | {anchor.ms_ssim:.3f} |",
            "",
            "PSNR: after the best affine fit of the estimate onto the target (structure); absolute PSNR: the "
            "intensities as they are.",
        ]
    )


def as_dicts(rows: list[TuneRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def reference_setting(description) -> tuple[str, int]:
    """What the other settings are measured against: Euler on the time grid the network was trained
    on (``--time-grid-points G``: G - 1 steps; the paper's released networks: 19), else Euler-20."""
    points = description.training.time_grid_points
    return ("euler", points - 1) if points >= 2 else REFERENCE


def default_grid(description) -> tuple[tuple[str, int], ...]:
    """``GRID``, plus ``SHORTCUT_GRID`` for a run trained with step conditioning; a network trained
    on a time grid gets its grid's Euler first (every other setting leaves that grid)."""
    shortcut = SHORTCUT_GRID if getattr(description.architecture, "step_conditioning", False) else ()
    reference = reference_setting(description)
    return tuple(dict.fromkeys([reference, *GRID, *shortcut])) if reference != REFERENCE else GRID + shortcut


def tune(
    model_dir: Path,
    data_dir: Path,
    samples: tuple[int, ...] | None = None,
    grid: tuple[tuple[str, int], ...] | None = None,
    seed: int = 0,
    device: str = "auto",
    store: bool = True,
    progress: bool = True,
    psnr_tolerance: float = PSNR_TOLERANCE,
    ms3im_tolerance: float = MS3IM_TOLERANCE,
    sample_tolerance: float = SAMPLE_TOLERANCE,
) -> tuple[list[TuneRow], SamplerRecommendation, MmseRow]:
    """Measure the table on ``data_dir`` and (``store``) keep the recommendation for the run's K in
    config.json, where predict, experiments, evaluate, calibrate and export find it, with its table in RUN/tuning/ (not
    stored: the table goes to RUN/tuning/dry-run/); returns the table, the recommendation and the
    anchor MMSE's row. ``grid`` None: ``default_grid``."""
    import json

    from hazematching.evaluation.evaluate import load_flow_run
    from hazematching.run import atomic_write_bytes, write_description

    model_dir, data_dir = Path(model_dir), Path(data_dir)
    check_tolerances(psnr_tolerance=psnr_tolerance, ms3im_tolerance=ms3im_tolerance, sample_tolerance=sample_tolerance)
    run = load_flow_run(model_dir, device)
    samples = samples or (run.config.sampler.samples,)
    reference_steps = reference_setting(run.config)
    grid = tuple(dict.fromkeys([reference_steps, *(grid or default_grid(run.config))]))
    rows = measure(run, data_dir, samples, grid, seed, progress)
    anchor = measure_anchor(run, data_dir, seed)
    k = run.config.sampler.samples if run.config.sampler.samples in samples else max(samples)
    reference = next(r for r in rows if r.samples == k and (r.solver, r.steps) == reference_steps)
    mmse = recommend_mmse(anchor, reference, psnr_tolerance)
    best, _ = recommend(rows, k, psnr_tolerance, ms3im_tolerance, reference_steps, sample_tolerance)
    chosen = recommendation(best, reference, data_dir, seed, anchor, mmse)
    # a dry run leaves the stored recommendation's table in tuning/ as it is
    folder = model_dir / "tuning" if store else model_dir / "tuning" / "dry-run"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = read_split(data_dir)
    problem = micro_ms3im_problem([p.target.shape for p in pairs], [p.name for p in pairs])
    table = {
        "data": str(data_dir),
        "seed": seed,
        "rows": as_dicts(rows),
        "mmse_anchor": asdict(anchor),
        "recommended": chosen.model_dump(),
        "not_computed": {"micro_ms3im": problem} if problem else {},
    }
    atomic_write_bytes(folder / "tune.json", json.dumps(table, indent=2).encode())
    tables = markdown(rows, best, reference_steps) + "\n\n" + mmse_markdown(anchor, reference, mmse)
    atomic_write_bytes(folder / "tune.md", (tables + "\n").encode())
    if store:
        write_description(model_dir, run.config.model_copy(update={"recommended_sampler": chosen}))
    return rows, chosen, anchor

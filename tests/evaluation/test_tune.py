"""hazematching tune: a reproducible table, a recommendation stored in the run and used by default."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import tifffile

from hazematching.data.io import DataError, read_split
from hazematching.evaluation.tune import (
    REFERENCE,
    MmseRow,
    TuneRow,
    measure,
    parse_grid,
    recommend,
    recommend_mmse,
    tune,
)
from hazematching.inference.predict import predict_array
from hazematching.run import RunError, load_model


def row(solver, steps, psnr, ms3im, k=4):
    nfe = steps * (1 if solver == "euler" else 2)
    return TuneRow(k, solver, steps, nfe, psnr, ms3im, psnr - 1, 1.0, 0.0)


def test_recommendation_is_the_fewest_evaluations_within_both_tolerances():
    rows = [
        row("euler", 20, 30.0, 0.90),
        row("euler", 2, 30.3, 0.80),  # PSNR better, MicroMS3IM 0.1 worse: the blur of two steps
        row("heun", 1, 29.0, 0.95),  # 1.0 dB worse
        row("heun", 2, 29.85, 0.895),  # within 0.2 dB and 0.01
        row("euler", 5, 29.9, 0.90),
        row("euler", 4, 30.0, 0.90, k=8),  # another K does not count
    ]
    best, reference = recommend(rows, samples=4)
    assert (reference.solver, reference.steps) == REFERENCE
    assert (best.solver, best.steps) == ("heun", 2)
    assert recommend(rows[:1], samples=4)[0] is rows[0]  # nothing faster: the reference itself


def test_the_samples_setting_is_chosen_by_sample_quality_too():
    def measured(solver, steps, psnr, fsim, gmsd):
        nfe = steps * (1 if solver == "euler" else 2)
        return TuneRow(4, solver, steps, nfe, psnr, 0.9, psnr - 1, 1.0, 0.0, sample_fsim=fsim, sample_gmsd=gmsd)

    rows = [
        measured("euler", 20, 30.0, 0.86, 0.12),
        measured("euler", 2, 30.1, 0.80, 0.12),  # a good MMSE from blurred samples: FSIM 0.06 worse
        measured("euler", 3, 30.0, 0.86, 0.15),  # GMSD 0.03 worse
        measured("heun", 2, 29.0, 0.855, 0.125),  # samples within 0.01, but the samples' mean 1 dB worse
        measured("euler", 5, 29.9, 0.857, 0.121),
    ]
    assert recommend(rows, samples=4)[0].steps == 5
    # a wider sample tolerance lets the two-step solve through
    assert recommend(rows, samples=4, sample_tolerance=0.1)[0].steps == 2
    with pytest.raises(ValueError, match="--sample-tolerance -1.*finite number >= 0"):
        recommend(rows, samples=4, sample_tolerance=-1)
    with pytest.raises(ValueError, match="--psnr-tolerance nan"):
        recommend(rows, samples=4, psnr_tolerance=float("nan"))


def test_the_anchor_is_recommended_only_when_its_intensities_are_right_too():
    reference = TuneRow(4, "euler", 20, 20, 30.0, 0.9, 29.0, 1.0, 0.0, absolute_psnr=28.0)
    assert recommend_mmse(MmseRow(30.5, 0.9, 0.9, 0.0, absolute_psnr=28.1), reference) == "anchor"
    assert recommend_mmse(MmseRow(29.7, 0.9, 0.9, 0.0, absolute_psnr=28.1), reference) == "samples"
    # a better structure with intensities off by a factor (a range-invariant PSNR cannot see it)
    assert recommend_mmse(MmseRow(30.5, 0.9, 0.9, 0.0, absolute_psnr=17.0), reference) == "samples"


def test_bad_requests_are_clear(trained_run, tmp_path):
    with pytest.raises(ValueError, match="SOLVER:STEPS"):
        parse_grid("rk4:3")
    with pytest.raises(ValueError, match="SOLVER:STEPS"):
        parse_grid("euler:0")
    assert parse_grid("heun:3")[0] == REFERENCE
    run = load_model(trained_run)
    with pytest.raises(ValueError, match="at least 2"):
        measure(run, tmp_path, (1,))
    (tmp_path / "input").mkdir()
    tifffile.imwrite(tmp_path / "input" / "a.tif", np.zeros((32, 32), np.uint16))
    with pytest.raises(DataError, match="target"):
        measure(run, tmp_path, (2,))


def held_out(sim_data, folder):
    """The simulated validation pairs at twice the size (MicroMS3IM needs more than 160 px a side)."""
    folder.mkdir()
    for i, pair in enumerate(read_split(sim_data / "val")):
        big = [np.kron(a, np.ones((2, 2), np.float32)) for a in (pair.target, pair.input)]
        tifffile.imwrite(folder / f"pair_{i}.tif", np.stack(big))
    return folder


def test_tune_stores_a_reproducible_recommendation_that_predict_and_export_use(trained_run, sim_data, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    data = held_out(sim_data, tmp_path / "held_out")
    grid = parse_grid("euler:2,heun:1")
    rows, chosen, _ = tune(run_dir, data, (2,), grid, seed=3, device="cpu", progress=False)
    again = measure(load_model(run_dir), data, (2,), grid, seed=3, progress=False)
    assert [(r.psnr, r.ms3im, r.sample_psnr, r.calibration_slope) for r in rows] == [
        (r.psnr, r.ms3im, r.sample_psnr, r.calibration_slope) for r in again
    ]
    table = json.loads((run_dir / "tuning" / "tune.json").read_text())
    assert len(table["rows"]) == 3 and table["recommended"]["solver"] == chosen.solver

    run = load_model(run_dir)
    assert run.config.recommended_sampler == chosen
    image = read_split(sim_data / "test")[0].input
    assert chosen.mmse in ("samples", "anchor") and table["mmse_anchor"]["evaluations"] == 1
    tuned = predict_array(run, image, samples=2, progress=False)
    explicit = predict_array(
        run, image, samples=2, solver=chosen.solver, steps=chosen.steps, mmse=chosen.mmse, progress=False
    )
    np.testing.assert_array_equal(tuned.mean, explicit.mean)
    np.testing.assert_array_equal(tuned.std, explicit.std)
    # the summary line of predict says where solver and steps came from
    from hazematching.settings import describe_settings, resolve_settings

    line = describe_settings(run.config, resolve_settings(run.config, samples=2))
    assert "K = 2 posterior samples" in line and f"{chosen.solver} {chosen.steps} steps (tune recommended)" in line
    other = "heun" if chosen.solver == "euler" else "euler"
    assert "tune recommended" not in describe_settings(run.config, resolve_settings(run.config, solver=other))
    # an explicit flag wins: the run's own stored steps with Euler differ from the recommendation
    default = predict_array(run, image, samples=2, mmse="samples", progress=False)
    stored = predict_array(run, image, samples=2, solver="euler", mmse="samples", progress=False)
    if (chosen.solver, chosen.steps) != ("euler", run.config.sampler.steps):
        assert not np.array_equal(stored.mean, default.mean)

    from hazematching.export import export_model

    package = export_model(run_dir, tmp_path / "tuned.zip", test_size=64)
    with zipfile.ZipFile(package) as archive:
        rdf = archive.read("rdf.yaml").decode()
        readme = archive.read("README.md").decode()
    assert f"solver: {chosen.solver}" in rdf and f"steps: {chosen.steps}" in rdf
    assert "tuned setting" in readme
    # measured at the K of the tune (2), drawn at the run's K: the README says both
    assert f"measured at K = {chosen.samples}; this package draws K = {run.config.sampler.samples}" in readme


def test_small_images_are_tuned_with_ms_ssim_as_the_structural_guard(trained_run, sim_data, tmp_path, capsys):
    """Robustness case 12: the paper's crops are 128 px, too small for MicroMS3IM. tune still works: the
    rule checks MS-SSIM instead, and the table, tune.json, the stored setting and the CLI say so."""
    from hazematching.cli import main as cli_main

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    cli_main(["tune", "--model", str(run_dir), "--data", str(sim_data / "val"), "--samples", "2",
              "--settings", "euler:2,heun:1", "--device", "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert "MS-SSIM (the images were too small for MicroMS3IM)" in out and "| n/a |" in out
    table = json.loads((run_dir / "tuning" / "tune.json").read_text())
    assert table["not_computed"]["micro_ms3im"].startswith("not computed: MicroMS3IM needs images of at least 161")
    assert all(r["ms3im"] is None and 0 < r["ms_ssim"] <= 1 for r in table["rows"])
    chosen = load_model(run_dir).config.recommended_sampler
    assert chosen.ms3im_delta is None and chosen.ms_ssim_delta is not None


def test_the_ms_ssim_guard_rejects_what_it_should():
    def small(solver, steps, psnr, ssim):
        return TuneRow(4, solver, steps, steps, psnr, None, psnr - 1, 1.0, 0.0, ms_ssim=ssim)

    rows = [small("euler", 20, 30.0, 0.90), small("euler", 2, 30.3, 0.80), small("euler", 5, 29.9, 0.895)]
    assert (recommend(rows, samples=4)[0].solver, recommend(rows, samples=4)[0].steps) == ("euler", 5)


def test_a_stored_setting_it_cannot_read_is_a_clear_error(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((run_dir / "config.json").read_text())
    config["recommended_sampler"] = {"solver": "rk4", "steps": 3}
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="recommended_sampler"):
        load_model(run_dir)


def test_a_shortcut_run_is_tuned_with_shortcut_steps_too(shortcut_run, trained_run, sim_data, tmp_path):
    from hazematching.evaluation.tune import GRID, SHORTCUT_GRID, default_grid

    assert default_grid(load_model(shortcut_run).config) == GRID + SHORTCUT_GRID
    assert default_grid(load_model(trained_run).config) == GRID
    data = held_out(sim_data, tmp_path / "held_out")
    rows = measure(load_model(shortcut_run), data, (2,), SHORTCUT_GRID, seed=1, progress=False)
    assert [(r.solver, r.steps, r.evaluations) for r in rows] == [(s, n, n) for s, n in SHORTCUT_GRID]
    with pytest.raises(ValueError, match="step conditioning"):  # a plain run has no shortcut steps
        measure(load_model(trained_run), data, (2,), (("shortcut", 2),), progress=False)

import numpy as np
import pytest

from hazematching.evaluation.calibration import calibration_curve, fit_calibration, plot_calibration


@pytest.mark.parametrize("scale, offset", [(1.8, 0.05), (0.6, 0.2), (1.0, 0.0)])
def test_recovers_known_scale_and_offset(scale, offset):
    rng = np.random.default_rng(0)
    predicted_std = rng.uniform(0.1, 1.0, 1_000_000)
    true_sigma = scale * predicted_std + offset
    error = rng.normal(0.0, true_sigma)
    a, b = fit_calibration(calibration_curve(predicted_std, error, bins=15))
    assert a == pytest.approx(scale, rel=0.05)
    assert b == pytest.approx(offset, abs=0.05 * max(offset, scale * 0.1))


def test_curve_bins_and_calibrated_curve_is_on_the_diagonal(tmp_path):
    rng = np.random.default_rng(1)
    std = rng.uniform(0.2, 2.0, 200_000)
    error = rng.normal(0.0, 2 * std + 0.1)
    before = calibration_curve(std, error, bins=15)
    assert len(before.rmv) == 15 and before.counts.sum() == std.size
    assert np.all(np.diff(before.rmv) > 0)
    a, b = fit_calibration(before)
    after = calibration_curve(a * std + b, error, bins=15)
    assert np.mean(np.abs(after.rmse - after.rmv)) < 0.1 * np.mean(np.abs(before.rmse - before.rmv))
    assert np.all(before.rmse_se > 0) and np.all(before.rmse_se < 0.05 * before.rmse)
    plot_calibration(before, after, a, b, tmp_path / "c.png", "test")
    assert (tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="pixels"):
        calibration_curve(std[:10], error[:11])

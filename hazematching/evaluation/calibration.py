"""Uncertainty calibration as in the paper: RMSE vs RMV in bins of predicted std, linear fit.

Pixels are sorted by predicted std and split into equally populated bins; per bin the root mean
squared error of the MMSE (RMSE) is compared with the root mean predicted variance (RMV). A
calibrated model lies on y = x; the fit RMSE ~ a * RMV + b gives the correction std' = a * std + b.
"""

from dataclasses import dataclass

import numpy as np

from hazematching.run import CALIBRATION_BINS


@dataclass
class CalibrationCurve:
    rmv: np.ndarray  # (bins,)
    rmse: np.ndarray  # (bins,)
    rmse_se: np.ndarray  # standard error of each RMSE (delta method)
    counts: np.ndarray


def calibration_curve(std: np.ndarray, error: np.ndarray, bins: int = CALIBRATION_BINS) -> CalibrationCurve:
    """``std``: predicted per-pixel std; ``error``: MMSE - target; any matching shapes."""
    std = np.asarray(std, np.float64).ravel()
    error = np.asarray(error, np.float64).ravel()
    if std.shape != error.shape:
        raise ValueError(f"std has {std.size} pixels but error has {error.size}")
    if std.size < bins:
        raise ValueError(f"{std.size} pixels cannot fill {bins} bins")
    order = np.argsort(std, kind="stable")
    groups = np.array_split(order, bins)
    rmv, rmse, se, counts = [], [], [], []
    for idx in groups:
        sq = error[idx] ** 2
        value = np.sqrt(sq.mean())
        rmv.append(np.sqrt((std[idx] ** 2).mean()))
        rmse.append(value)
        se.append(sq.std() / (2 * max(value, 1e-12) * np.sqrt(len(idx))))
        counts.append(len(idx))
    return CalibrationCurve(np.array(rmv), np.array(rmse), np.array(se), np.array(counts))


def fit_calibration(curve: CalibrationCurve) -> tuple[float, float]:
    """Least-squares (a, b) of RMSE = a * RMV + b over the bins."""
    a, b = np.polyfit(curve.rmv, curve.rmse, 1)
    return float(a), float(b)


def plot_calibration(
    before: CalibrationCurve, after: CalibrationCurve, scale: float, offset: float, path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    top = max(before.rmv.max(), before.rmse.max(), after.rmv.max(), after.rmse.max()) * 1.05
    ax.plot([0, top], [0, top], "k--", lw=1, label="y = x")
    for curve, colour, label in [
        (before, "tab:blue", "uncalibrated"),
        (after, "tab:purple", f"calibrated (a={scale:.3g}, b={offset:.3g})"),
    ]:
        ax.plot(curve.rmv, curve.rmse, "o-", color=colour, ms=4, label=label)
        ax.fill_between(curve.rmv, curve.rmse - curve.rmse_se, curve.rmse + curve.rmse_se, color=colour, alpha=0.25)
    ax.set_xlabel("RMV (root mean predicted variance)")
    ax.set_ylabel("RMSE of the MMSE")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

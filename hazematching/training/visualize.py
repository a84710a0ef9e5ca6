"""Image grids for quick visual checks (validation during training)."""

from pathlib import Path

import numpy as np
import torch


def _scaled(image: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    return np.clip((image.float().numpy() - lo) / max(hi - lo, 1e-8), 0.0, 1.0)


def sample_grid(cond, target, samples: list, mean, std) -> np.ndarray:
    """One row per image: input | target | samples... | MMSE | std, each (B, 1, H, W).

    Input and std are scaled to their own 1-99.9 percentile range; target, samples and MMSE share
    the target's range so their intensities compare directly.
    """
    rows = []
    for i in range(cond.shape[0]):
        tgt = target[i, 0]
        lo, hi = np.percentile(tgt.numpy(), [1, 99.9])
        c_lo, c_hi = np.percentile(cond[i, 0].numpy(), [1, 99.9])
        panels = [_scaled(cond[i, 0], c_lo, c_hi), _scaled(tgt, lo, hi)]
        panels += [_scaled(s[i, 0], lo, hi) for s in samples]
        if std is not None:
            panels.append(_scaled(mean[i, 0], lo, hi))
            panels.append(_scaled(std[i, 0], 0.0, float(np.percentile(std[i, 0].numpy(), 99.9))))
        gap = np.ones((tgt.shape[0], 2), np.float32)
        rows.append(np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1))
        rows.append(np.ones((2, rows[-1].shape[1]), np.float32))
    return np.concatenate(rows[:-1], axis=0).astype(np.float32)


def save_png(grid: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)

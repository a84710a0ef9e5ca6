"""The package's cover image (bioimage.io shows it in the model zoo)."""

from pathlib import Path

import numpy as np


def write_cover(image: np.ndarray, output: np.ndarray, path: Path) -> None:
    """input | MMSE side by side (2:1), each scaled to its 1-99.8 percentile range."""
    from PIL import Image

    def scaled(a):
        lo, hi = np.percentile(a, [1, 99.8])
        return (np.clip((a - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)

    Image.fromarray(np.concatenate([scaled(image), scaled(output)], axis=1)).save(path, optimize=True)

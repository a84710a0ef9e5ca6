"""Per-channel normalisation statistics, computed on the training split and stored with the model."""

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    input_mean: float
    input_std: float
    target_mean: float
    target_std: float

    @classmethod
    def from_pairs(cls, pairs) -> "Normalization":
        """Pixel-weighted mean/std over all training images (float64 accumulation)."""
        stats = []
        for attr in ("input", "target"):
            n = sum(getattr(p, attr).size for p in pairs)
            mean = sum(float(getattr(p, attr).sum(dtype=np.float64)) for p in pairs) / n
            var = sum(float(((getattr(p, attr).astype(np.float64) - mean) ** 2).sum()) for p in pairs) / n
            stats += [mean, max(var**0.5, 1e-6)]
        return cls(*stats)

    def normalize_input(self, x):
        return (x - self.input_mean) / self.input_std

    def normalize_target(self, x):
        return (x - self.target_mean) / self.target_std

    def denormalize_target(self, x):
        return x * self.target_std + self.target_mean

    def to_dict(self) -> dict:
        return asdict(self)

"""Torch datasets of normalised (input, target) crops.

Training items are addressed by a *virtual index* v = epoch * len(dataset) + i. Crop position and
dihedral augmentation are drawn from a generator keyed on (seed, v), so an item is a pure function of
v: resuming at step s reproduces the data exactly, and splitting a batch across processes changes
nothing. The item carries v as ``key`` so the trainer can derive its noise and time from it too.
"""

import numpy as np
import torch
from torch.utils.data import Dataset

from hazematching.data.io import ImagePair
from hazematching.data.normalization import Normalization


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square (k in 0..7)."""
    array = np.rot90(array, k % 4, axes=(-2, -1))
    return array[..., ::-1] if k >= 4 else array


def _to_tensors(pair_input: np.ndarray, pair_target: np.ndarray, norm: Normalization) -> dict:
    # crops of memory-mapped files keep the file's pixel type: float32 first, as for in-memory pairs
    pair_input, pair_target = np.asarray(pair_input, dtype=np.float32), np.asarray(pair_target, dtype=np.float32)
    return {
        "input": torch.from_numpy(np.ascontiguousarray(norm.normalize_input(pair_input), dtype=np.float32))[None],
        "target": torch.from_numpy(np.ascontiguousarray(norm.normalize_target(pair_target), dtype=np.float32))[None],
    }


class RandomCropDataset(Dataset):
    """Training crops: ``patches_per_image`` random crops of every image per epoch."""

    def __init__(
        self,
        pairs: list[ImagePair],
        crop_size: int,
        normalization: Normalization,
        seed: int = 0,
        augment: bool = True,
        patches_per_image: int | None = None,
    ):
        self.pairs = pairs
        self.crop_size = crop_size
        self.norm = normalization
        self.seed = seed
        self.augment = augment
        if patches_per_image is None:
            mean_area = np.mean([p.input.size for p in pairs])
            patches_per_image = max(1, int(mean_area // crop_size**2))
        self.patches_per_image = patches_per_image

    def __len__(self) -> int:
        return len(self.pairs) * self.patches_per_image

    def __getitem__(self, key: int) -> dict:
        pair = self.pairs[key % len(self.pairs)]
        rng = np.random.default_rng([self.seed, key])
        h, w = pair.input.shape
        y = int(rng.integers(0, h - self.crop_size + 1))
        x = int(rng.integers(0, w - self.crop_size + 1))
        window = (slice(y, y + self.crop_size), slice(x, x + self.crop_size))
        inp, target = pair.input[window], pair.target[window]
        if self.augment:
            k = int(rng.integers(0, 8))
            inp, target = dihedral(inp, k), dihedral(target, k)
        return {**_to_tensors(inp, target, self.norm), "key": key}


class FixedCropDataset(Dataset):
    """Validation crops: fixed positions (a seeded choice, no augmentation), the same every time."""

    def __init__(self, pairs: list[ImagePair], crop_size: int, normalization: Normalization, crops_per_image: int = 2):
        self.items = []
        rng = np.random.default_rng(12345)
        for pair in pairs:
            h, w = pair.input.shape
            for _ in range(crops_per_image):
                y = int(rng.integers(0, h - crop_size + 1))
                x = int(rng.integers(0, w - crop_size + 1))
                window = (slice(y, y + crop_size), slice(x, x + crop_size))
                self.items.append(_to_tensors(pair.input[window], pair.target[window], normalization))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

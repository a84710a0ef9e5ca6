"""Checks of training pairs before the first step: mistakes that would otherwise train a useless model
with exit status 0 (an empty or constant channel, the input copied into the target, swapped channels).
"""

from pathlib import Path

import numpy as np

from hazematching.data.io import DataError, ImagePair

# a channel whose std is below this fraction of its mean magnitude (or exactly 0) carries no image
CONSTANT_RELATIVE_STD = 1e-6
# swapped channels are suspected when at least this fraction of a split's pairs has the higher contrast
# in the input: widefield haze adds background, so confocal targets have the higher std/mean
# (12 of 12 simulated pairs and every pair of ../shared/robustness have it; measured 2026-11-30)
SWAPPED_FRACTION = 0.75


def _constant(image: np.ndarray) -> bool:
    image = np.asarray(image, dtype=np.float64)
    return float(image.std()) <= CONSTANT_RELATIVE_STD * max(1.0, abs(float(image.mean())))


def _contrast(image: np.ndarray) -> float:
    image = np.asarray(image, dtype=np.float64)
    return float(image.std()) / max(abs(float(image.mean())), 1e-12)


def check_pairs(pairs: list[ImagePair], folder: Path, split: str) -> list[str]:
    """Refuse (``DataError``) a pair with a constant channel or an input identical to its target; return
    warnings for a split whose channels look swapped. ``folder`` and ``split`` name where the pairs came
    from in the messages."""
    for pair in pairs:
        for role, channel, image in (("target", 0, pair.target), ("input", 1, pair.input)):
            if _constant(image):
                raise DataError(
                    f"{folder}/{pair.name} ({split} split): the {role} (channel {channel}) is constant "
                    f"({float(np.asarray(image).mean()):.6g} everywhere); a model trained on it predicts a "
                    "constant. Check that the file holds the confocal target in channel 0 and the widefield "
                    "input in channel 1, or remove the pair"
                )
        if np.array_equal(pair.input, pair.target):
            raise DataError(
                f"{folder}/{pair.name} ({split} split): input and target are identical; the pair teaches "
                "nothing about dehazing (was the widefield image saved into both channels?)"
            )
    higher = [p.name for p in pairs if _contrast(p.input) > _contrast(p.target)]
    if pairs and len(higher) >= SWAPPED_FRACTION * len(pairs) and len(pairs) >= 2:
        return [
            f"warning: {folder} ({split} split): in {len(higher)} of {len(pairs)} pairs the input (channel 1) has "
            "more contrast than the target (channel 0), as if the channels were swapped; HazeMatching expects "
            "channel 0 = confocal target, channel 1 = widefield input (or input/ and target/ folders)"
        ]
    return []

"""Is an image within the intensities the model was trained on? One check for ``predict_array``, the
experiment runner and the napari widget.

A network normalises its input with the training data's mean and std (``Normalization``); an image
whose intensities lie many of those stds away (another bit depth, a scaling step, the wrong channel)
is dehazed into numbers that mean nothing, without any error. Measured on 2026-11-30 against the
statistics of ``tests/assets/sim/train``: its held-out images lie within 0.8 training stds of the
mean with std ratios 0.5–2.0; the robustness case ``out_of_range/x1000.tif`` lies 3500 stds away.
"""

import numpy as np

# far outside: the image mean more than MAX_MEAN_DISTANCE training stds from the training mean, or its
# std more than MAX_STD_RATIO times larger or smaller than the training inputs' std
MAX_MEAN_DISTANCE = 6.0
MAX_STD_RATIO = 10.0


class InputRangeWarning(UserWarning):
    """An input's intensities lie far outside those the model was trained on."""


def out_of_range(normalization, images) -> str | None:
    """A one-line explanation when ``images`` (one 2D array or several planes of one file, raw
    intensities) lie far outside the training inputs described by ``normalization`` (anything with
    ``input_mean``/``input_std``), else None."""
    planes = [images] if np.ndim(images) == 2 else list(images)
    planes = [np.asarray(p, dtype=np.float64) for p in planes]
    mean = float(np.mean([p.mean() for p in planes]))
    std = float(np.sqrt(np.mean([p.var() for p in planes])))
    train_mean, train_std = float(normalization.input_mean), float(normalization.input_std)
    distance = abs(mean - train_mean) / train_std
    ratio = std / train_std
    if distance <= MAX_MEAN_DISTANCE and 1 / MAX_STD_RATIO <= ratio <= MAX_STD_RATIO:
        return None
    return (
        f"intensities (mean {mean:.4g}, std {std:.4g}) lie far outside those the model was trained on (inputs "
        f"with mean {train_mean:.4g}, std {train_std:.4g}): the result may mean nothing; check the channel, the "
        "bit depth and any scaling of this image"
    )

"""Checks of training pairs before the first step: mistakes that would otherwise train a useless model
with exit status 0 (an empty or constant channel, the input copied into the target, swapped channels).
"""

import numpy as np

from hazematching.data.io import DataError, ImagePair

# a channel whose std is below this fraction of its mean magnitude (or exactly 0) carries no image
CONSTANT_RELATIVE_STD = 1e-6
# input and target correlated above this are one image (a copy, or a copy rescaled): after the
# per-channel normalisation the network would learn the identity
COPY_CORRELATION = 0.99999
# swapped channels are suspected when at least this fraction of a split's pairs has the higher contrast
# in the input: widefield haze adds background, so confocal targets have the higher std/mean
# (12 of 12 simulated pairs and every pair of ../shared/robustness have it; measured 2026-11-30)
SWAPPED_FRACTION = 0.75
# a channel with at least this fraction of its pixels at one value is nearly blank (a warning: sparse
# samples can be like that; the spots of the tests' simulated targets leave 98.7 % at the background)
NEARLY_CONSTANT_FRACTION = 0.995
# ... and so is one whose std is below this fraction of its mean (a constant plus faint noise, e.g. a
# float channel 42 + N(0, 1e-4)); fluorescence images have std/mean above 0.05 (every pair of the tests)
NEARLY_CONSTANT_CONTRAST = 1e-3


def _thinned(image: np.ndarray) -> np.ndarray:
    """Every 4th row and column of large images: the checks see the same, at 1/16 of the reading."""
    step = 4 if min(image.shape) >= 256 else 1
    return np.asarray(image[::step, ::step], dtype=np.float64)


def _constant(image: np.ndarray) -> bool:
    """No image at all: relative to its own mean, so an image in small units (1e-7) is not constant."""
    image = _thinned(image)
    std = float(image.std())
    return std == 0.0 or std <= CONSTANT_RELATIVE_STD * abs(float(image.mean()))


def _most_common(image: np.ndarray) -> tuple[float, float]:
    """(value, fraction of the pixels that have it)."""
    values, counts = np.unique(_thinned(image), return_counts=True)
    top = int(counts.argmax())
    return float(values[top]), float(counts[top]) / float(counts.sum())


def _contrast(image: np.ndarray) -> float:
    image = _thinned(image)
    return float(image.std()) / max(abs(float(image.mean())), 1e-12)


def _where(pair: ImagePair, role: str) -> str:
    """The file a message is about: the pair's 2-channel file with the channel, or its input/ or target/ file."""
    if pair.input_path is None or pair.input_path == pair.target_path:
        path = pair.input_path or pair.name
        return f"{path}: the {role} (channel {0 if role == 'target' else 1})"
    return f"{pair.target_path if role == 'target' else pair.input_path}: the {role} image"


def _listed(problems: list[str], split: str, what: str, advice: str) -> DataError:
    """``problems``: one per pair (the first problem of each)."""
    more = f" (and {len(problems) - 1} more pair(s) of the {split} split)" if len(problems) > 1 else ""
    return DataError(f"{' '.join(filter(None, (problems[0], what)))}{more}; {advice}")


def _channels(pair: ImagePair) -> str:
    """How the messages name input and target of a split's pairs."""
    if pair.input_path is None or pair.input_path == pair.target_path:
        return "the input (channel 1)", "the target (channel 0)"
    return "the input image", "the target image"


def check_pairs(pairs: list[ImagePair], split: str) -> list[str]:
    """Refuse (``DataError``) pairs with a constant channel or an input that is a (rescaled) copy of its
    target, naming the first file and how many more; return warnings for a split (named ``split`` in
    the messages) whose channels look swapped, and for channels that are nearly constant."""
    constant = []
    for pair in pairs:  # the first constant channel of each pair
        for role, image in (("target", pair.target), ("input", pair.input)):
            if _constant(image):
                mean = float(np.asarray(image).mean())
                constant.append(f"{_where(pair, role)} ({split} split) is constant ({mean:.6g} everywhere)")
                break
    if constant:
        raise _listed(
            constant,
            split,
            "",
            "a model trained on it predicts a constant. Check that each pair holds the confocal target (channel 0, "
            "or target/) and the widefield input (channel 1, or input/), or remove the pair",
        )
    copies = []
    for pair in pairs:
        a, b = _thinned(pair.input).ravel(), _thinned(pair.target).ravel()
        correlation = float(np.corrcoef(a, b)[0, 1])
        if correlation > COPY_CORRELATION:
            copies.append(f"{pair.input_path or pair.name} ({split} split): input and target")
    if copies:
        raise _listed(
            copies,
            split,
            "are the same image (one is a copy of the other, perhaps rescaled)",
            "the pair teaches nothing about dehazing (was the widefield image saved as the target too?)",
        )
    warnings = []
    for pair in pairs:
        for role, image in (("target", pair.target), ("input", pair.input)):
            value, fraction = _most_common(image)
            contrast = _contrast(image)
            if fraction >= NEARLY_CONSTANT_FRACTION:
                how = f"{100 * fraction:.1f} % of its pixels are {value:.6g}"
            elif contrast < NEARLY_CONSTANT_CONTRAST:
                how = f"its std is {contrast:.2g} of its mean {float(np.mean(image)):.6g}"
            else:
                continue
            warnings.append(
                f"warning: {_where(pair, role)} ({split} split) is nearly constant: {how}; check that the file holds "
                "the image you mean (a nearly blank channel teaches the model little)"
            )
    higher = [p.name for p in pairs if _contrast(p.input) > _contrast(p.target)]
    if pairs and len(higher) >= SWAPPED_FRACTION * len(pairs) and len(pairs) >= 2:
        folder = pairs[0].input_path.parent if pairs[0].input_path is not None else split
        given, expected = _channels(pairs[0])
        warnings.append(
            f"warning: {folder} ({split} split): in {len(higher)} of {len(pairs)} pairs {given} has more contrast "
            f"than {expected}, as if they were swapped; HazeMatching expects channel 0 = confocal target, channel 1 "
            "= widefield input (or input/ and target/ folders)"
        )
    return warnings

"""The package's test and sample tensors: the genuine output of the scripted model on a crop."""

from pathlib import Path

import numpy as np
import tifffile
import torch

from hazematching.commands import TEST_SIZE
from hazematching.core import Dehazer
from hazematching.data.io import read_split
from hazematching.run import RunDescription, RunError

from .cover import write_cover
from .geometry import Geometry


def crop_test_image(
    config: RunDescription, test_image: Path | None, size: int | None, geometry: "Geometry", channel: int | None = None
) -> np.ndarray:
    """A centred square crop of ``size`` (None: ``TEST_SIZE``, or less where the image is smaller),
    fitted to the sizes the package accepts; ``channel``: of a multi-channel ``test_image``."""
    if test_image is not None:
        from hazematching.data.io import read_image_2d

        image = read_image_2d(Path(test_image), geometry.min_size, channel, flag="--test-channel")
    else:
        data = config.training.data
        val = data / "val" if (data / "val").is_dir() else data
        try:
            image = read_split(val)[0].input
        except Exception as exc:
            relative = " (a relative path, stored by an earlier release: read from this folder)"
            raise RunError(
                f"no test image: the run's data {val}{'' if val.is_absolute() else relative} cannot be read "
                f"({exc}); pass --test-image"
            ) from exc
    size = geometry.fit(min(TEST_SIZE, min(image.shape)) if size is None else size)
    if min(image.shape) < size:
        raise RunError(
            f"test image of shape {image.shape} is smaller than the test tensor size {size}; give a smaller "
            "--test-size or a larger --test-image"
        )
    y0, x0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return np.ascontiguousarray(image[y0 : y0 + size, x0 : x0 + size], dtype=np.float32)


def write_test_files(
    tmp: Path,
    model: Dehazer,
    config: RunDescription,
    test_image: Path | None,
    size: int | None,
    geometry: "Geometry",
    channel: int | None = None,
):
    """Test and sample tensors (the genuine output of the scripted model), cover, training config;
    returns the scripted model. ``channel``: of a multi-channel ``test_image``."""
    image = crop_test_image(config, test_image, size, geometry, channel)
    test_input = image[None, None]
    scripted = torch.jit.script(model)
    with torch.no_grad():
        test_output = scripted(torch.from_numpy(test_input)).numpy()
    np.save(tmp / "test_input.npy", test_input)
    np.save(tmp / "test_output.npy", test_output)
    # sample tensors: the same data as images (the deepImageJ check feeds the sample input)
    tifffile.imwrite(tmp / "sample_input.tif", test_input[0, 0])
    tifffile.imwrite(tmp / "sample_output.tif", test_output[0], metadata={"axes": "CYX"})
    write_cover(image, test_output[0, 0], tmp / "cover.png")
    (tmp / "training_config.json").write_bytes(config.to_json())
    return scripted

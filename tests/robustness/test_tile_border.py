"""Robustness case 1 (../shared/robustness): one border rule for every window. An image whose size is
not a multiple of the network's stride is padded once, as a whole, so a prediction in many tiles
equals one whole-image window for every size (as it always did for multiples of the stride), in
``predict`` and in the exported model alike."""

import numpy as np
import pytest
import torch

from hazematching.core import Dehazer
from hazematching.data.io import read_split
from hazematching.evaluation.metrics import range_invariant_psnr
from hazematching.inference.predict import predict_array
from hazematching.run import load_model


def _image(sim_data, size):
    """A widefield image of ``size`` px with structure up to its last row (mirrored test images)."""
    image = read_split(sim_data / "test")[0].input.astype(np.float32)
    while min(image.shape) < size:
        image = np.concatenate([np.concatenate([image, image[:, ::-1]], 1)] * 2, 0)[: 2 * image.shape[0]]
    return np.ascontiguousarray(image[:size, :size])


@pytest.mark.parametrize("size", [128, 129, 130, 131])
def test_tiles_equal_the_whole_image_at_every_size(trained_run, sim_data, size):
    run = load_model(trained_run)
    image = _image(sim_data, size)
    options = dict(samples=2, steps=2, seed=0, progress=False, compile="off")
    whole = predict_array(run, image, tile_size=512, **options)
    tiled = predict_array(run, image, tile_size=64, overlap=16, **options)
    assert image.shape == (size, size)
    assert range_invariant_psnr(tiled.mean, whole.mean) > 55  # was 39-40 dB at 129-131 px
    assert np.abs(tiled.mean - whole.mean)[-3:].max() <= 1e-2 * np.ptp(whole.mean)  # the last rows (were 25-30 %)


def test_the_exported_model_pads_the_image_as_predict_does(trained_run, sim_data):
    """The package's model on a 131 px image gives predict's numbers, whole and in tiles."""
    run = load_model(trained_run)
    image = _image(sim_data, 131)
    settings = dict(samples=2, steps=2, seed=0)
    expected = predict_array(run, image, tile_size=64, overlap=16, progress=False, compile="off", **settings).mean
    model = Dehazer(
        run.config.architecture.model_dump(mode="json"),
        **run.normalization.to_dict(),
        sample_noise=run.config.sampler.sample_noise,  # the run's, as export passes it
        tile_size=64,
        overlap=16,
        **settings,
    ).eval()
    model.sampler.net.load_state_dict(run.model.state_dict())
    with torch.no_grad():
        out = model(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3 * np.ptp(expected))


def test_an_overlap_below_the_receptive_radius_is_warned_about(trained_run, sim_data, tmp_path):
    """Case 1, another instance: --tile-size 48 --overlap 8 gave seams (0.8 % of the range) without a
    word; an overlap of at least the receptive radius is silent and gives the whole image's result. A tile
    of less than twice the radius caps the overlap at half a tile: the one warning names every flag that
    fixes it (and export warns about the package's tiles the same way)."""
    import warnings

    from hazematching.inference.predict import TileSeamWarning

    run = load_model(trained_run)
    radius = run.receptive_radius()
    assert radius is not None and 8 < radius < 64
    image = _image(sim_data, 200)
    options = dict(samples=2, steps=2, seed=0, progress=False, compile="off")
    whole = predict_array(run, image, tile_size=512, **options)
    stride = run.model.stride
    small, needed = (2 * radius - 1) // stride * stride, -(-2 * radius // stride) * stride
    with pytest.warns(TileSeamWarning, match=rf"^tiles of {needed} px overlapping by 8 px: less than the network's "
                      rf"receptive radius \({radius} px\).*; use --overlap {radius} or more$"):  # fmt: skip
        narrow = predict_array(run, image, tile_size=needed, overlap=8, **options)
    # a tile too small for any overlap to suffice names --tile-size (and --overlap only if it was too small too)
    with pytest.warns(TileSeamWarning, match=rf"^tiles of {small} px overlapping by {small // 2} px \(at most half "
                      rf"a tile\): .*; use --tile-size {needed} or more$"):  # fmt: skip
        predict_array(run, image, tile_size=small, **options)
    with pytest.warns(TileSeamWarning, match=rf"; use --tile-size {needed} --overlap {radius} or more$"):
        predict_array(run, image, tile_size=small, overlap=8, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TileSeamWarning)
        wide = predict_array(run, image, tile_size=160, overlap=radius, **options)
        predict_array(run, image, tile_size=needed, **options)
    from hazematching.export import export_model

    with pytest.warns(TileSeamWarning, match=rf"^the package: tiles of {small} px .*; use --tile-size {needed} or"):
        export_model(trained_run, tmp_path / "m.zip", samples=1, steps=1, tile_size=small, formats=("torchscript",))
    spread = float(whole.mean.max() - whole.mean.min())
    assert np.abs(narrow.mean - whole.mean).max() > 1e-3 * spread
    assert np.abs(wide.mean - whole.mean).max() < 1e-3 * spread

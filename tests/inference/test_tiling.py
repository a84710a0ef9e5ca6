import numpy as np
import pytest

from hazematching.inference.tiling import spans, tiles


@pytest.mark.parametrize(
    "length, tile, overlap", [(100, 32, 8), (64, 64, 16), (30, 64, 16), (1000, 256, 64), (257, 128, 32)]
)
def test_kept_regions_partition_the_axis(length, tile, overlap):
    result = spans(length, tile, overlap)
    covered = np.zeros(length, int)
    for s in result:
        assert 0 <= s.start and s.start + min(tile, length) <= length  # tiles stay inside the image
        assert s.start <= s.keep_start < s.keep_end <= s.start + min(tile, length)
        covered[s.keep_start : s.keep_end] += 1
    assert (covered == 1).all()
    # away from the image border, every kept pixel has at least overlap/2 context on both sides
    for s in result:
        if s.keep_start > 0:
            assert s.keep_start - s.start >= overlap // 2
        if s.keep_end < length:
            assert s.start + tile - s.keep_end >= overlap // 2


def test_tiles_grid_and_errors():
    all_tiles, th, tw = tiles(100, 50, 32, 8)
    assert (th, tw) == (32, 32)
    assert len(all_tiles) == len(spans(100, 32, 8)) * len(spans(50, 32, 8))
    with pytest.raises(ValueError, match="larger than the overlap"):
        spans(100, 16, 16)


@pytest.mark.parametrize("length", [100, 257, 512, 1024, 1104, 2128, 4096])
def test_fitted_tile_never_costs_more_and_stays_in_range(length):
    from hazematching.core.tiles import fitted_tile, tile_spans

    size = fitted_tile(length, 256, 64, 8)
    assert 256 <= size <= 256 + 192 // 4 and size % 8 == 0
    assert len(tile_spans(length, size, 64)) * size <= len(tile_spans(length, 256, 64)) * 256
    if length == 1104:  # 6 tiles of 256 -> 5 of 272
        assert (size, len(tile_spans(length, size, 64))) == (272, 5)
    if length == 1024:  # 5 tiles of 256 -> 4 of 304
        assert (size, len(tile_spans(length, size, 64))) == (304, 4)


def test_exported_model_tiles_exactly_like_predict(trained_run):
    """Same fitted tiles, same noise: the Dehazer module equals predict_array to float rounding."""
    import numpy as np
    import torch

    from hazematching.core import Dehazer
    from hazematching.inference.predict import predict_array
    from hazematching.run import load_model

    run = load_model(trained_run)
    image = (np.random.default_rng(0).gamma(2.0, 60.0, (150, 136)) + 100).astype(np.float32)
    tiled = tiles(150, 136, 64, 16, run.model.stride)
    assert tiled[1:] != (64, 64)  # the fitted size is not the requested one here
    dehazer = Dehazer(
        run.config.architecture.model_dump(),
        **run.normalization.to_dict(),
        sample_noise=run.config.sampler.sample_noise,  # the run's, as export passes it
        samples=2,
        steps=2,
        seed=4,
        tile_size=64,
        overlap=16,
    ).eval()
    dehazer.sampler.net.load_state_dict(run.model.state_dict())
    with torch.no_grad():
        out = dehazer(torch.from_numpy(image)[None, None])[0].numpy()
    ours = predict_array(run, image, samples=2, steps=2, seed=4, tile_size=64, overlap=16, progress=False)
    np.testing.assert_allclose(out[0], ours.mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out[1], ours.std, rtol=1e-4, atol=1e-3)


def _dehazer(run, halo):
    from hazematching.core import Dehazer

    dehazer = Dehazer(
        run.config.architecture.model_dump(),
        **run.normalization.to_dict(),
        sample_noise=run.config.sampler.sample_noise,  # the run's, as export passes it
        samples=2,
        steps=2,
        seed=4,
        tile_size=64,
        overlap=16,
        halo=halo,
    ).eval()
    dehazer.sampler.net.load_state_dict(run.model.state_dict())
    return dehazer


@pytest.mark.parametrize("mode", ["symmetric", "reflect"])
def test_exported_model_does_not_compute_on_consumer_padding(trained_run, mode):
    """A whole image padded by the halo (bioimageio.core: symmetric; deepImageJ/ilastik: mirror) gives
    the unpadded result exactly, with the same network pixels; the scripted model agrees."""
    import torch

    from hazematching.run import load_model

    run = load_model(trained_run)
    dehazer = _dehazer(run, halo=24)
    scripted_model = torch.jit.script(dehazer)  # before the hook, which TorchScript cannot compile
    pixels = []
    dehazer.sampler.net.register_forward_hook(lambda m, args, out: pixels.append(args[0].shape[-1] * args[0].shape[-2]))
    image = (np.random.default_rng(1).gamma(2.0, 60.0, (150, 136)) + 100).astype(np.float32)
    padded = np.pad(image, 24, mode=mode)
    with torch.no_grad():
        plain = dehazer(torch.from_numpy(image)[None, None])
        plain_pixels, pixels[:] = sum(pixels), []
        out = dehazer(torch.from_numpy(padded)[None, None])
        scripted = scripted_model(torch.from_numpy(padded)[None, None])
    assert dehazer.consumer_padding(torch.from_numpy(padded)[None, None]) == [24, 24, 24, 24]
    assert sum(pixels) == plain_pixels
    assert out.shape == (1, 2, 198, 184)
    assert torch.equal(out[..., 24:-24, 24:-24], plain)
    torch.testing.assert_close(scripted, out, rtol=1e-5, atol=1e-4)


def test_exported_model_uses_real_context_of_a_block(trained_run):
    """A block cut from a larger image has real context on top/left (used) and mirror padding at the
    image border bottom/right (skipped): its result is the larger image's result."""
    import torch

    from hazematching.run import load_model

    run = load_model(trained_run)
    dehazer = _dehazer(run, halo=24)
    big = (np.random.default_rng(2).gamma(2.0, 60.0, (174, 160)) + 100).astype(np.float32)
    block = torch.from_numpy(np.pad(big, ((0, 24), (0, 24)), mode="symmetric"))[None, None]
    assert dehazer.consumer_padding(block) == [0, 24, 0, 24]
    with torch.no_grad():
        out = dehazer(block)
        whole = dehazer(torch.from_numpy(big)[None, None])
        inner_only = dehazer(torch.from_numpy(big[24:, 24:])[None, None])
    assert torch.equal(out[..., :174, :160], whole)
    # without the context the block's top-left pixels would come out differently
    assert (out[0, 0, 24:40, 24:40] - inner_only[0, 0, :16, :16]).abs().max() > 1e-2 * whole.abs().max()


def test_shortcut_sampling_is_the_same_batched_tiled_and_exported(shortcut_run):
    """A shortcut run's few steps: the scripted exported model equals predict_array (tiles, batches of
    tiles and of samples), and differs from Euler with the same step count (the step size is used)."""
    import torch

    from hazematching.core import Dehazer
    from hazematching.inference.predict import predict_array
    from hazematching.run import load_model

    run = load_model(shortcut_run)
    assert run.config.sampler.solver == "shortcut"
    image = (np.random.default_rng(2).gamma(2.0, 60.0, (150, 136)) + 100).astype(np.float32)
    options = dict(samples=3, steps=2, seed=4, tile_size=64, overlap=16, progress=False)
    ours = predict_array(run, image, solver="shortcut", **options)
    batched = predict_array(run, image, solver="shortcut", tiles_per_call=4, samples_per_call=3, **options)
    np.testing.assert_allclose(batched.mean, ours.mean, rtol=1e-5, atol=1e-4)
    dehazer = Dehazer(
        run.config.architecture.model_dump(),
        **run.normalization.to_dict(),
        sample_noise=run.config.sampler.sample_noise,  # the run's, as export passes it
        samples=3,
        steps=2,
        seed=4,
        solver="shortcut",
        tile_size=64,
        overlap=16,
    ).eval()
    dehazer.sampler.net.load_state_dict(run.model.state_dict())
    with torch.no_grad():
        out = torch.jit.script(dehazer)(torch.from_numpy(image)[None, None])[0].numpy()
    np.testing.assert_allclose(out[0], ours.mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out[1], ours.std, rtol=1e-4, atol=1e-3)
    euler = predict_array(run, image, solver="euler", **options)
    assert np.abs(euler.mean - ours.mean).max() > 1e-3

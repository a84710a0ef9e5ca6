"""The fast inference paths give the plain results: compiled + channels_last network, batched
samples and tiles, a padded last batch, second-order solvers through predict."""

import numpy as np
import pytest
import torch

from hazematching.core import UNet, sample_posterior
from hazematching.inference.predict import predict_array
from hazematching.inference.speed import FastNetwork, default_samples_per_call, fast_network
from hazematching.run import load_model


def small_net() -> UNet:
    """A small U-Net with non-trivial weights (the zero-initialised last convs would hide errors)."""
    torch.manual_seed(0)
    net = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    return net


def test_fast_network_equals_plain_network_and_leaves_the_model_alone():
    """Eager here: compiling costs ~40 s on a CPU, paid once in the compiled-prediction test below."""
    net = small_net()
    x, c, t = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32), torch.rand(2)
    fast = fast_network(net, torch.device("cpu"), compile="off", precision="fp32")
    assert fast.compiled is None and not fast.bf16
    with torch.inference_mode():
        torch.testing.assert_close(fast(x, c, t), net(x, c, t), atol=1e-4, rtol=1e-4)
        # the caller's model keeps its layout; the fast copy is channels_last
        assert net.stem.weight.is_contiguous() and fast.net.stem.weight.is_contiguous(memory_format=torch.channels_last)
        plain = sample_posterior(net, c, num_samples=3, steps=2, seed=1, solver="heun")
        quick = sample_posterior(fast, c, num_samples=3, steps=2, seed=1, solver="heun", samples_per_call=3)
    torch.testing.assert_close(quick.mean, plain.mean, atol=1e-4, rtol=1e-4)


def test_failed_compilation_falls_back_to_eager():
    net = UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1).eval()

    class Broken(FastNetwork):
        def __init__(self):
            super().__init__(net, compile=False, bf16=False)
            self.compiled = lambda *a: (_ for _ in ()).throw(RuntimeError("no C++ compiler"))

    fast = Broken()
    x = torch.randn(1, 1, 16, 16)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        out = fast(x, x, torch.zeros(1))
    assert fast.compiled is None
    torch.testing.assert_close(out, net(x, x, torch.zeros(1)))


def test_samples_per_batch_divides_k():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert default_samples_per_call(cpu, 8, 1) == 1
    assert (
        default_samples_per_call(gpu, 8, 4) == 8
        and default_samples_per_call(gpu, 50, 4) == 5
        and default_samples_per_call(gpu, 7, 8) == 1
    )


def test_fast_predict_matches_plain_predict(trained_run):
    """Tiles batched 3 at a time with a padded last batch, samples batched: the same image as one tile
    and one sample per call (compiled too in the next test)."""
    run = load_model(trained_run)
    image = np.random.default_rng(0).random((150, 170)).astype(np.float32) * 300 + 50
    options = dict(samples=4, steps=2, seed=5, tile_size=64, overlap=16, progress=False)
    plain = predict_array(run, image, tiles_per_call=1, samples_per_call=1, compile="off", **options)
    fast = predict_array(run, image, tiles_per_call=3, samples_per_call=2, compile="off", **options)
    scale = np.abs(plain.mean).max()
    assert np.abs(fast.mean - plain.mean).max() <= 1e-4 * scale
    assert np.abs(fast.std - plain.std).max() <= 1e-4 * scale
    midpoint = predict_array(run, image, solver="midpoint", compile="off", **options)
    assert not np.allclose(midpoint.mean, plain.mean)


def test_bad_speed_options(trained_run):
    run = load_model(trained_run)
    image = np.ones((32, 32), np.float32)
    with pytest.raises(ValueError, match="--compile"):
        predict_array(run, image, samples=1, steps=1, compile="maybe", progress=False)
    with pytest.raises(ValueError, match="unknown solver"):
        predict_array(run, image, samples=1, steps=1, solver="rk4", progress=False)


def test_bf16_autocast_path_returns_float32_close_to_fp32():
    """The GPU default (bf16 autocast) exercised on the CPU: float32 out, bf16-level agreement."""
    net = small_net()
    x, c, t = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32), torch.rand(1)
    fast = fast_network(net, torch.device("cpu"), compile="off", precision="bf16")
    with torch.inference_mode():
        out, ref = fast(x, c, t), net(x, c, t)
    assert fast.bf16 and out.dtype == torch.float32
    assert not torch.equal(out, ref)  # it really ran in bf16
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_auto_compiles_only_jobs_that_pay_back():
    from hazematching.inference.speed import CPU_COMPILE_MIN_EVALUATIONS, GPU_COMPILE_MIN_EVALUATIONS, should_compile

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # one 1024^2 image at K = 8, N = 20 on a GPU: 2 tile batches x 8 x 20 = 320 evaluations, eager
    assert not should_compile("auto", gpu, 320)
    assert should_compile("auto", gpu, 20 * 320)  # a folder of 20 such images compiles
    assert GPU_COMPILE_MIN_EVALUATIONS < 20 * 320 and CPU_COMPILE_MIN_EVALUATIONS > 320
    assert not should_compile("auto", cpu, 20 * 320 // 4) and should_compile("auto", cpu, CPU_COMPILE_MIN_EVALUATIONS)
    assert should_compile("on", cpu, 1) and not should_compile("off", gpu, 10**9)


def test_compiled_prediction_of_several_sizes_equals_eager_without_a_compile_per_size(trained_run):
    """Images of three sizes through one compiled network, tiles and samples batched (3 tiles x 2
    samples a call, the last batch of the first two sizes padded): the results of eager one-tile,
    one-sample calls, and at most two graphs (the first size static, then one with symbolic sizes that
    serves every later size). Tiles are >= 96^2 here: on a CPU, tiles below ~72^2 cross a size guard
    of the convolution and compile once more."""
    from torch._dynamo.utils import counters

    run = load_model(trained_run)
    rng = np.random.default_rng(0)
    options = dict(samples=2, steps=2, seed=3, progress=False, tile_size=96, overlap=16)
    torch._dynamo.reset()
    counters.clear()
    # the first two sizes give tiles that differ in both axes: dynamo frees only the axes that changed
    for shape in [(120, 136), (108, 112), (200, 176)]:
        image = (rng.random(shape) * 500).astype(np.float32)
        eager = predict_array(run, image, compile="off", tiles_per_call=1, samples_per_call=1, **options)
        compiled = predict_array(run, image, compile="on", tiles_per_call=3, samples_per_call=2, **options)
        np.testing.assert_allclose(compiled.mean, eager.mean, rtol=1e-4, atol=1e-3 * float(np.abs(eager.mean).max()))
        np.testing.assert_allclose(compiled.std, eager.std, rtol=1e-3, atol=1e-3 * float(eager.std.max()))
    assert run.fast[("cpu", "on", "auto")].compiled is not None, "compilation fell back to eager mode"
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])

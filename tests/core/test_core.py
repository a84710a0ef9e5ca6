import pytest
import torch

from hazematching.core import UNet, cfm_loss, interpolate, sample_posterior, target_velocity


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1).eval()
    # give the zero-initialised residual branches some weight so the outputs depend on the input
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (2, 1, 37, 50), (1, 1, 17, 64)])
def test_unet_any_size(model, shape):
    x = torch.randn(shape)
    out = model(x, x, torch.rand(shape[0]))
    assert out.shape == shape


def test_unet_time_conditioning_matters(model):
    x = torch.randn(1, 1, 32, 32)
    assert not torch.allclose(model(x, x, torch.tensor([0.1])), model(x, x, torch.tensor([0.9])))
    with pytest.raises(ValueError, match="pass t"):
        model(x, x)


def test_default_unet_is_local(model):
    """Changing a far-away pixel must not change the output: tiling-safe receptive field."""
    x = torch.randn(1, 1, 128, 128)
    t = torch.tensor([0.5])
    changed = x.clone()
    changed[..., 120, 120] += 10
    diff = (model(changed, changed, t) - model(x, x, t)).abs()[0, 0]
    assert diff[:48, :48].max() == 0
    assert diff[110:, 110:].max() > 0


def test_group_norm_unet_is_not_local():
    """The reference's GroupNorm couples every pixel: the reason it is not the default."""
    torch.manual_seed(0)
    net = UNet(base_channels=8, channel_mults=(1, 2), norm="group").eval()
    x = torch.randn(1, 1, 64, 64)
    changed = x.clone()
    changed[..., 60, 60] += 10
    t = torch.tensor([0.5])
    assert (net(changed, changed, t) - net(x, x, t))[0, 0, :8, :8].abs().max() > 0


def test_attention_option_builds_and_runs():
    net = UNet(base_channels=8, channel_mults=(1, 2), attention_levels=(1,))
    x = torch.randn(1, 1, 16, 16)
    assert net(x, x, torch.rand(1)).shape == x.shape
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(channel_mults=(1, 2), attention_levels=(2,))


def test_path_endpoints_and_velocity():
    x0, x1 = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    assert torch.allclose(interpolate(x0, x1, torch.zeros(3)), x0)
    assert torch.allclose(interpolate(x0, x1, torch.ones(3)), x1)
    t = torch.tensor([0.25, 0.5, 0.75])
    assert torch.allclose(interpolate(x0, x1, t)[1], 0.5 * (x0[1] + x1[1]))
    assert torch.allclose(target_velocity(x0, x1), x1 - x0)


def test_cfm_loss_is_zero_for_the_oracle_velocity():
    x0, x1, cond = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    oracle = lambda xt, c, t: x1 - x0  # noqa: E731
    assert cfm_loss(oracle, x0, x1, torch.rand(2), cond) == 0
    wrong = lambda xt, c, t: torch.zeros_like(xt)  # noqa: E731
    assert torch.isclose(cfm_loss(wrong, x0, x1, torch.rand(2), cond), ((x1 - x0) ** 2).mean())


def test_euler_sampler_solves_a_known_flow():
    """For v = c - x0-style constant velocity, Euler is exact: the ODE maps x0 to x0 + c."""

    class Constant(torch.nn.Module):
        in_channels = 1

        def forward(self, x, cond, t):
            return cond

    cond = torch.randn(1, 1, 16, 16)
    post = sample_posterior(Constant(), cond, num_samples=3, steps=7, seed=0, keep_samples=True)
    from hazematching.core import hash_normal

    for k in range(3):
        assert torch.allclose(post.samples[:, k], hash_normal(0, k, 1, 1, 16, 16) + cond, atol=1e-5)


class _Flow(torch.nn.Module):
    """dx/dt = t * cond (exact: x1 = x0 + cond / 2) or dx/dt = -x (exact: x1 = x0 / e)."""

    in_channels = 1

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x, cond, t):
        return t.view(-1, 1, 1, 1) * cond if self.kind == "linear" else -x


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun"])
def test_solvers_on_known_flows(solver):
    from hazematching.core import hash_normal

    cond = torch.randn(1, 1, 8, 8)
    x0 = hash_normal(0, 0, 1, 1, 8, 8)
    steps = 5
    linear = sample_posterior(_Flow("linear"), cond, num_samples=1, steps=steps, seed=0, solver=solver).mean
    expected_error = -cond / (2 * steps) if solver == "euler" else torch.zeros_like(cond)  # Euler's left Riemann sum
    torch.testing.assert_close(linear - (x0 + cond / 2), expected_error, atol=1e-5, rtol=0)
    # order of convergence on dx/dt = -x: the error shrinks 2x (Euler) or 4x (2nd order) per halving of dt
    errors = [
        (sample_posterior(_Flow("decay"), cond, num_samples=1, steps=n, seed=0, solver=solver).mean - x0 / torch.e)
        .abs()
        .max()
        for n in (8, 16)
    ]
    ratio = float(errors[0] / errors[1])
    assert (1.8 < ratio < 2.2) if solver == "euler" else (3.6 < ratio < 4.4), ratio


def test_batched_samples_equal_one_at_a_time(model):
    cond = torch.randn(2, 1, 32, 32)
    one = sample_posterior(model, cond, num_samples=5, steps=2, seed=3, keep_samples=True)
    batched = sample_posterior(model, cond, num_samples=5, steps=2, seed=3, keep_samples=True, samples_per_call=3)
    torch.testing.assert_close(batched.samples, one.samples, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.std, one.std, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown solver"):
        sample_posterior(model, cond, num_samples=1, steps=1, solver="rk4")


def test_sampler_seed_reproducibility(model):
    cond = torch.randn(2, 1, 24, 40)
    a = sample_posterior(model, cond, num_samples=3, steps=4, seed=11, keep_samples=True)
    b = sample_posterior(model, cond, num_samples=3, steps=4, seed=11, keep_samples=True)
    c = sample_posterior(model, cond, num_samples=3, steps=4, seed=12, keep_samples=True)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    assert not torch.allclose(a.samples, c.samples)
    # the K samples of one call differ from each other
    assert not torch.allclose(a.samples[:, 0], a.samples[:, 1])


def test_k_samples_in_one_call_match_k_separate_calls(model):
    cond = torch.randn(2, 1, 32, 32)
    joint = sample_posterior(model, cond, num_samples=4, steps=3, seed=5, keep_samples=True)
    for k in range(4):
        single = sample_posterior(model, cond, num_samples=1, steps=3, seed=5, first_sample=k, keep_samples=True)
        assert torch.equal(single.samples[:, 0], joint.samples[:, k])


def test_posterior_mean_and_std_match_the_samples(model):
    cond = torch.randn(1, 1, 32, 32)
    post = sample_posterior(model, cond, num_samples=5, steps=2, seed=0, keep_samples=True)
    assert torch.allclose(post.mean, post.samples.mean(dim=1), atol=1e-5)
    assert torch.allclose(post.std, post.samples.std(dim=1, unbiased=False), atol=1e-5)
    with pytest.raises(ValueError):
        sample_posterior(model, cond, num_samples=0)


def test_upsample_nearest2x_equals_interpolate():
    from hazematching.core.unet import upsample_nearest2x

    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(
        upsample_nearest2x(x), torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"), rtol=0, atol=0
    )


def test_upsample_nearest2x_keeps_channels_last():
    from hazematching.core.unet import upsample_nearest2x

    x = torch.randn(2, 3, 5, 7).to(memory_format=torch.channels_last)
    up = upsample_nearest2x(x)
    torch.testing.assert_close(up, torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"), rtol=0, atol=0)
    assert up.is_contiguous(memory_format=torch.channels_last)


def test_channel_norm_fused_channels_last_path_equals_the_formula():
    """The layer_norm path (channels_last) and the explicit formula (NCHW) agree in value and gradient."""
    from hazematching.core.unet import ChannelNorm

    torch.manual_seed(0)
    norm = ChannelNorm(8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(2, 8, 6, 5) * 3 + 1).requires_grad_()
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and not x_cl.is_contiguous()
    plain, fused = norm(x), norm(x_cl)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    # per pixel: zero mean, unit variance over channels before the affine map
    unit = (plain - norm.bias) / norm.weight
    torch.testing.assert_close(unit.mean(dim=1), torch.zeros(2, 6, 5), rtol=0, atol=1e-5)
    grad = torch.randn_like(plain)
    g_plain = torch.autograd.grad(plain, [x, norm.weight, norm.bias], grad)
    g_fused = torch.autograd.grad(fused, [x_cl, norm.weight, norm.bias], grad)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_sample_posterior_refuses_a_solver_its_ode_sampler_does_not_use():
    from hazematching.core import ODESampler

    net = UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1).eval()
    cond = torch.zeros(1, 1, 8, 8)
    sampler = ODESampler(net, 1, "heun")
    with pytest.raises(ValueError, match="built with solver='heun'"):
        sample_posterior(sampler, cond, num_samples=1, steps=1, solver="euler")
    same = sample_posterior(sampler, cond, num_samples=1, steps=2, seed=0).mean
    assert torch.equal(same, sample_posterior(net, cond, num_samples=1, steps=2, seed=0, solver="heun").mean)


def test_anchor_mmse_is_the_velocity_at_zero_and_keeps_the_samples_std(model):
    """``mmse="anchor"``: the MMSE is v(0, 0, c), one more network evaluation; the std stays the samples'."""
    cond = torch.randn(2, 1, 32, 32)
    plain = sample_posterior(model, cond, num_samples=3, steps=2, seed=4)
    anchor = sample_posterior(model, cond, num_samples=3, steps=2, seed=4, mmse="anchor")
    assert torch.equal(anchor.std, plain.std)
    with torch.no_grad():
        expected = model(torch.zeros_like(cond), cond, torch.zeros(2))
    assert torch.allclose(anchor.mean, expected, atol=1e-6)
    assert not torch.allclose(anchor.mean, plain.mean, atol=1e-3)
    with pytest.raises(ValueError, match="mmse='median'"):
        sample_posterior(model, cond, num_samples=1, mmse="median")


def test_antithetic_pairs_negate_the_noise_and_cancel_where_the_flow_is_linear(model):
    """``sample_noise="antithetic"``: sample 2j + 1 starts from -x0 of sample 2j (sample 0 is the
    independent one); on a flow linear in x0 (dx/dt = -x + t c) a pair's mean is the solution from
    x0 = 0 exactly, where independent samples' mean keeps their noise. Batching leaves it unchanged."""
    cond = torch.randn(1, 1, 16, 16)

    class Linear(torch.nn.Module):
        in_channels = 1

        def forward(self, x, cond, t):
            return -x + t.view(-1, 1, 1, 1) * cond

    pair = sample_posterior(Linear(), cond, 2, 5, seed=3, keep_samples=True, sample_noise="antithetic")
    plain = sample_posterior(Linear(), cond, 2, 5, seed=3, keep_samples=True)
    from hazematching.core import ODESampler

    sampler = ODESampler(Linear(), 1, "euler", "antithetic")
    x0 = sampler.noise(cond, 0, 3, None, None, 4)
    assert torch.equal(x0[1], -x0[0]) and torch.equal(x0[3], -x0[2]) and not torch.equal(x0[2], x0[0])
    assert torch.equal(pair.samples[:, 0], plain.samples[:, 0])
    zero = ODESampler(Linear(), 1, "euler").integrate(torch.zeros_like(cond), cond, 5)
    torch.testing.assert_close(pair.mean, zero, atol=1e-6, rtol=0)
    assert (plain.mean - zero).abs().max() > 0.1
    assert pair.std.min() > 0  # the pair still spreads
    # the network path: batching and first_sample give the same samples as one at a time
    joint = sample_posterior(model, cond, 5, 2, seed=1, keep_samples=True, sample_noise="antithetic")
    batched = sample_posterior(
        model, cond, 5, 2, seed=1, keep_samples=True, sample_noise="antithetic", samples_per_call=3
    )
    torch.testing.assert_close(batched.samples, joint.samples, atol=1e-5, rtol=1e-5)
    third = sample_posterior(model, cond, 1, 2, seed=1, first_sample=3, keep_samples=True, sample_noise="antithetic")
    assert torch.equal(third.samples[:, 0], joint.samples[:, 3])
    with pytest.raises(ValueError, match="sample_noise='sobol'"):
        sample_posterior(model, cond, 1, sample_noise="sobol")

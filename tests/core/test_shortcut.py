"""Shortcut models: step-size conditioning, the self-consistency loss, the shortcut solver."""

import pytest
import torch

from hazematching.core import ODESampler, UNet, cfm_loss, keyed_step_sizes, sample_posterior, shortcut_loss
from hazematching.core.shortcut import STEP_LEVELS

ARCH = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1)


def _pair(seed=0):
    torch.manual_seed(seed)
    plain = UNet(**ARCH).eval()
    with torch.no_grad():  # as after training: zero-initialised layers (e.g. the time modulation) are not zero
        for p in plain.parameters():
            p.add_(0.1 * torch.randn_like(p))
    step = UNet(**ARCH, step_conditioning=True).eval()
    missing, unexpected = step.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("step_mlp.") for k in missing)
    return plain, step


def _perturb(net):
    with torch.no_grad():
        for p in net.step_mlp.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return net


def test_a_fine_tuned_network_starts_as_the_plain_one_and_zero_step_is_the_velocity():
    plain, step = _pair()
    x, cond = torch.randn(3, 1, 24, 20), torch.randn(3, 1, 24, 20)
    t = torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        for d in (None, torch.zeros(3), torch.full([3], 0.25), torch.tensor([1.0, 0.5, 0.125])):
            torch.testing.assert_close(step(x, cond, t, d), plain(x, cond, t), rtol=0, atol=0)
        _perturb(step)
        # d = None is d = 0: the instantaneous velocity, whatever the step MLP learned
        torch.testing.assert_close(step(x, cond, t), step(x, cond, t, torch.zeros(3)), rtol=0, atol=0)
        assert (step(x, cond, t, torch.full([3], 0.5)) - step(x, cond, t)).abs().max() > 1e-4  # the step matters


def test_shortcut_solver_is_euler_when_the_step_is_ignored_and_differs_when_not():
    _, step = _pair(1)
    cond = torch.randn(2, 1, 16, 16)
    options = dict(num_samples=2, steps=4, seed=3)
    euler = sample_posterior(step, cond, solver="euler", **options)
    short = sample_posterior(step, cond, solver="shortcut", **options)
    torch.testing.assert_close(short.mean, euler.mean, rtol=0, atol=0)
    _perturb(step)
    euler = sample_posterior(step, cond, solver="euler", **options)
    short = sample_posterior(step, cond, solver="shortcut", **options)
    assert (short.mean - euler.mean).abs().max() > 1e-4
    # the scripted network (as in the exported package) takes the step size too
    scripted = ODESampler(torch.jit.script(step), 1, "shortcut")
    torch.testing.assert_close(sample_posterior(scripted, cond, **options).mean, short.mean, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="step conditioning"):
        ODESampler(UNet(**ARCH), 1, "shortcut")


def test_shortcut_loss_halves():
    _, step = _pair(2)
    _perturb(step)
    x0, x1, cond = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    t, keys = torch.rand(4), torch.arange(4)
    # no consistency items: the flow-matching loss of the velocity at d = 0
    torch.testing.assert_close(
        shortcut_loss(step, x0, x1, t, cond, keys, 0, 0),
        cfm_loss(lambda x, c, tt: step(x, c, tt), x0, x1, t, cond),
    )

    # a flow with one constant velocity is its own shortcut: consistency loss 0, flow-matching loss not
    def constant(x, c, tt, d):
        return torch.ones_like(x)

    assert float(shortcut_loss(constant, x0, x1, t, cond, keys, 0, 4)) < 1e-12
    assert float(shortcut_loss(constant, x0, x1, t, cond, keys, 0, 0)) > 0.5

    # a network whose step output is off is penalised on the consistency items
    def off(x, c, tt, d):
        return torch.ones_like(x) * (1 + d.view(-1, 1, 1, 1))

    assert float(shortcut_loss(off, x0, x1, t, cond, keys, 0, 4)) > 1e-4


def test_keyed_step_sizes_cover_the_levels_and_depend_only_on_seed_and_key():
    keys = torch.arange(512)
    d = keyed_step_sizes(keys, seed=5)
    levels = sorted(set((torch.log2(1 / d) - 1).round().int().tolist()))
    assert levels == list(range(STEP_LEVELS))
    torch.testing.assert_close(keyed_step_sizes(keys[100:200], 5), d[100:200])
    assert not torch.equal(keyed_step_sizes(keys, 6), d)

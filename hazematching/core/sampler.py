"""The one ODE sampler: posterior samples of dx/dt = v_theta(t, [x, c]) from t=0 to t=1.

``ODESampler.draw`` makes samples (hash noise keyed on seed, sample index and pixel position, then
N steps of Euler, midpoint or Heun, or N shortcut steps of size 1/N for a network trained with step
conditioning, see ``shortcut.py``); ``update_moments`` folds them into the running mean/std.
Everything that samples (validation grids, predict, the exported bioimage.io model) uses these two.
Sample k is therefore the same whether it is drawn alone, with ``first_sample=k``, or batched with
other samples and tiles, on any device. Both are TorchScript-compatible, so the exported model runs
the same code.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .noise import hash_normal

SOLVERS = ("euler", "midpoint", "heun", "shortcut")
# How the MMSE is made: the mean of the K samples, or the velocity at the anchor (x = 0, t = 0)
MMSE_ESTIMATES = ("samples", "anchor")
# The noise x0 of the K samples: independent draws, or antithetic pairs (sample 2j + 1 starts from the
# negated x0 of sample 2j; antithetic variates): each sample is still a posterior sample, and where the
# flow is close to linear in x0 the pair's deviations cancel, so their mean has less variance.
SAMPLE_NOISES = ("independent", "antithetic")


def evaluations_per_step(solver: str) -> int:
    """Network evaluations per step: Euler and shortcut 1, midpoint and Heun 2 (second order)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    return 2 if solver in ("midpoint", "heun") else 1


@dataclass
class Posterior:
    mean: torch.Tensor  # MMSE estimate, (B, C, H, W)
    std: torch.Tensor  # per-pixel std over samples, (B, C, H, W)
    samples: torch.Tensor | None  # (B, K, C, H, W) when keep_samples


def update_moments(
    mean: torch.Tensor, m2: torch.Tensor, x: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Welford's update with the ``count``-th sample (1-based): memory does not grow with K."""
    delta = x - mean
    mean = mean + delta / count
    return mean, m2 + delta * (x - mean)


class ODESampler(nn.Module):
    """Wraps a velocity network; ``draw`` returns posterior samples for a batch of conditions."""

    def __init__(self, net: nn.Module, out_channels: int = 1, solver: str = "euler", sample_noise: str = "independent"):
        super().__init__()
        evaluations_per_step(solver)
        if sample_noise not in SAMPLE_NOISES:
            raise ValueError(f"sample_noise={sample_noise!r}: expected one of {', '.join(SAMPLE_NOISES)}")
        self.antithetic = sample_noise == "antithetic"
        if solver == "shortcut" and not getattr(net, "step_conditioning", False):
            raise ValueError(
                "the shortcut solver needs a network trained with step conditioning (train or fine-tune with "
                "--shortcut-fraction)"
            )
        self.net = net
        self.out_channels = out_channels
        self.solver = solver

    def velocity(self, x: torch.Tensor, cond: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full([x.shape[0]], t, device=x.device, dtype=x.dtype)
        return self.net(x, cond, tt).to(x.dtype)

    def shortcut(self, x: torch.Tensor, cond: torch.Tensor, t: float, d: float) -> torch.Tensor:
        """The average velocity over a step of size ``d`` (shortcut models)."""
        tt = torch.full([x.shape[0]], t, device=x.device, dtype=x.dtype)
        dd = torch.full([x.shape[0]], d, device=x.device, dtype=x.dtype)
        return self.net(x, cond, tt, dd).to(x.dtype)

    def integrate(self, x: torch.Tensor, cond: torch.Tensor, steps: int) -> torch.Tensor:
        """From t=0 to t=1 in ``steps`` equal steps; no host-device synchronisation inside."""
        dt = 1.0 / steps
        for i in range(steps):
            t = i * dt
            if self.solver == "shortcut":
                x = x + dt * self.shortcut(x, cond, t, dt)
                continue
            v = self.velocity(x, cond, t)
            if self.solver == "midpoint":
                x = x + dt * self.velocity(x + (0.5 * dt) * v, cond, t + 0.5 * dt)
            elif self.solver == "heun":
                x = x + (0.5 * dt) * (v + self.velocity(x + dt * v, cond, t + dt))
            else:
                x = x + dt * v
        return x

    def draw(
        self,
        cond: torch.Tensor,
        sample_index: int,
        steps: int,
        seed: int,
        origin_y: torch.Tensor | None = None,
        origin_x: torch.Tensor | None = None,
        count: int = 1,
    ) -> torch.Tensor:
        """Samples ``sample_index .. sample_index + count - 1`` for every item of ``cond``, integrated
        together as one network batch; returns (count * B, C, H, W), sample-major."""
        x0 = self.noise(cond, sample_index, seed, origin_y, origin_x, count)
        if count > 1:
            cond = cond.repeat(count, 1, 1, 1)
        return self.integrate(x0, cond, steps).float()

    def anchor_mean(self, cond: torch.Tensor) -> torch.Tensor:
        """v(0, 0, c): the posterior mean E[x1 | c] in one network evaluation. On the straight path the
        optimal velocity at t = 0 is E[x1 | c] - x for every x; at x = 0 it is the posterior mean itself,
        and ``--mean-anchor-fraction`` trains that point directly (an MSE regression, as the U-Net's)."""
        x = torch.zeros(cond.shape[0], self.out_channels, cond.shape[2], cond.shape[3], dtype=cond.dtype)
        return self.velocity(x.to(cond.device), cond, 0.0).float()

    def noise(
        self,
        cond: torch.Tensor,
        index: int,
        seed: int,
        origin_y: torch.Tensor | None,
        origin_x: torch.Tensor | None,
        count: int,
    ) -> torch.Tensor:
        """The x0 of noise indices ``index .. index + count - 1``, sample-major (count * B, C, H, W)."""
        b, h, w = cond.shape[0], cond.shape[2], cond.shape[3]
        noise = []
        for s in range(count):
            k = index + s
            z = hash_normal(
                seed, k // 2 if self.antithetic else k, b, self.out_channels, h, w, origin_y, origin_x, cond.device
            )
            noise.append(-z if self.antithetic and k % 2 == 1 else z)
        return torch.cat(noise, dim=0).to(cond.dtype)


@torch.no_grad()
def sample_posterior(
    model,
    cond: torch.Tensor,
    num_samples: int = 8,
    steps: int = 20,
    seed: int = 0,
    first_sample: int = 0,
    keep_samples: bool = False,
    origin_y: torch.Tensor | None = None,
    origin_x: torch.Tensor | None = None,
    on_sample: Callable[[int], None] | None = None,
    solver: str | None = None,
    samples_per_call: int = 1,
    mmse: str = "samples",
    sample_noise: str = "independent",
) -> Posterior:
    """Draw ``num_samples`` samples for a batch of (normalised) hazy images ``cond``; the MMSE is their
    mean (``mmse="samples"``) or ``ODESampler.anchor_mean`` (``"anchor"``, one more network evaluation);
    the std is the samples' either way.

    ``samples_per_call`` samples go through the network together (more parallel work per call on a
    GPU); the rest are reduced on the fly, so memory does not grow with K unless ``keep_samples``.
    ``origin_y``/``origin_x`` place tiles in a larger image; ``on_sample(n)`` is called after every
    ``n`` finished samples (progress bars). ``solver``: for a network, default Euler; an
    ``ODESampler`` brings its own, and asking it for another one is an error, not ignored.
    """
    if num_samples < 1 or steps < 1:
        raise ValueError(f"num_samples and steps must be >= 1, got {num_samples} and {steps}")
    if samples_per_call < 1:
        raise ValueError(f"samples_per_call must be >= 1, got {samples_per_call}")
    if mmse not in MMSE_ESTIMATES:
        raise ValueError(f"mmse={mmse!r}: expected one of {', '.join(MMSE_ESTIMATES)}")
    if isinstance(model, ODESampler):
        if solver is not None and solver != model.solver:
            raise ValueError(f"solver={solver!r}, but this ODESampler was built with solver={model.solver!r}")
        if model.antithetic != (sample_noise == "antithetic"):
            raise ValueError(f"sample_noise={sample_noise!r}, but this ODESampler was built with the other noise")
        sampler = model
    else:  # the state x_t has the network's output (velocity) channels
        sampler = ODESampler(model, getattr(model, "out_channels", cond.shape[1]), solver or "euler", sample_noise)
    b, _, h, w = cond.shape
    mean = torch.zeros(b, sampler.out_channels, h, w, device=cond.device, dtype=torch.float32)
    m2 = torch.zeros_like(mean)
    kept = []
    done = 0
    while done < num_samples:
        count = min(samples_per_call, num_samples - done)
        xs = sampler.draw(cond, first_sample + done, steps, seed, origin_y, origin_x, count).reshape(count, b, -1, h, w)
        for s in range(count):
            mean, m2 = update_moments(mean, m2, xs[s], done + s + 1)
            if keep_samples:
                kept.append(xs[s])
        done += count
        if on_sample is not None:
            on_sample(count)
    std = torch.sqrt(m2 / num_samples)
    if mmse == "anchor":
        mean = sampler.anchor_mean(cond)
    return Posterior(mean=mean, std=std, samples=torch.stack(kept, dim=1) if keep_samples else None)

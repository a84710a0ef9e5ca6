"""The one Euler sampler: posterior samples of dx/dt = v_theta(t, [x, c]) from t=0 to t=1.

``EulerSampler.draw`` makes one sample (hash noise keyed on seed, sample index and pixel position,
then N explicit Euler steps); ``update_moments`` folds it into the running mean/std. Everything
that samples (validation grids, predict, the exported bioimage.io model) uses these two. Sample k of
a K-sample call is therefore bit-identical to a 1-sample call with ``first_sample=k``, on any device
and for any tiling. Both are TorchScript-compatible, so the exported model runs the same code.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .noise import hash_normal


@dataclass
class Posterior:
    mean: torch.Tensor  # MMSE estimate, (B, C, H, W)
    std: torch.Tensor  # per-pixel std over samples, (B, C, H, W)
    samples: torch.Tensor | None  # (B, K, C, H, W) when keep_samples


def update_moments(mean: torch.Tensor, m2: torch.Tensor, x: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Welford's update with the ``count``-th sample (1-based): memory does not grow with K."""
    delta = x - mean
    mean = mean + delta / count
    return mean, m2 + delta * (x - mean)


class EulerSampler(nn.Module):
    """Wraps a velocity network; ``draw`` returns one posterior sample for a batch of conditions."""

    def __init__(self, net: nn.Module, out_channels: int = 1):
        super().__init__()
        self.net = net
        self.out_channels = out_channels

    def integrate(self, x: torch.Tensor, cond: torch.Tensor, steps: int) -> torch.Tensor:
        """Explicit Euler from t=0 to t=1 in ``steps`` equal steps (``steps`` network evaluations)."""
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full([x.shape[0]], i * dt, device=x.device, dtype=x.dtype)
            x = x + dt * self.net(x, cond, t).to(x.dtype)
        return x

    def draw(
        self,
        cond: torch.Tensor,
        sample_index: int,
        steps: int,
        seed: int,
        origin_y: torch.Tensor | None = None,
        origin_x: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, h, w = cond.shape[0], cond.shape[2], cond.shape[3]
        x0 = hash_normal(seed, sample_index, b, self.out_channels, h, w, origin_y, origin_x, cond.device)
        return self.integrate(x0.to(cond.dtype), cond, steps).float()


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
    on_sample: Callable[[], None] | None = None,
) -> Posterior:
    """Draw ``num_samples`` samples for a batch of (normalised) hazy images ``cond``.

    Samples are integrated one at a time and reduced on the fly, so memory does not grow with K
    unless ``keep_samples``. ``origin_y``/``origin_x`` place tiles in a larger image;
    ``on_sample`` is called after each finished sample (progress bars).
    """
    if num_samples < 1 or steps < 1:
        raise ValueError(f"num_samples and steps must be >= 1, got {num_samples} and {steps}")
    sampler = model if isinstance(model, EulerSampler) else EulerSampler(model, getattr(model, "in_channels", cond.shape[1]))
    b, _, h, w = cond.shape
    mean = torch.zeros(b, sampler.out_channels, h, w, device=cond.device, dtype=torch.float32)
    m2 = torch.zeros_like(mean)
    kept = []
    for k in range(num_samples):
        x = sampler.draw(cond, first_sample + k, steps, seed, origin_y, origin_x)
        mean, m2 = update_moments(mean, m2, x, k + 1)
        if keep_samples:
            kept.append(x)
        if on_sample is not None:
            on_sample()
    std = torch.sqrt(m2 / num_samples)
    return Posterior(mean=mean, std=std, samples=torch.stack(kept, dim=1) if keep_samples else None)

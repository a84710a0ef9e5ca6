"""The one Euler sampler: K posterior samples of dx/dt = v_theta(t, [x, c]) from t=0 to t=1.

Everything that samples (validation grids, predict, export) calls ``sample_posterior``. Noise comes
from ``hash_normal`` keyed on (seed, sample index, pixel position), so sample k of a K-sample call is
bit-identical to a 1-sample call with ``first_sample=k``, on any device and for any tiling.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .noise import hash_normal


@dataclass
class Posterior:
    mean: torch.Tensor  # MMSE estimate, (B, C, H, W)
    std: torch.Tensor  # per-pixel std over samples, (B, C, H, W)
    samples: torch.Tensor | None  # (B, K, C, H, W) when keep_samples


def euler_integrate(model, x: torch.Tensor, cond: torch.Tensor, steps: int) -> torch.Tensor:
    """Explicit Euler from t=0 to t=1 in ``steps`` equal steps (``steps`` network evaluations)."""
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt, device=x.device, dtype=x.dtype)
        x = x + dt * model(x, cond, t).to(x.dtype)
    return x


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

    Samples are integrated one at a time and reduced on the fly (Welford), so memory does not grow
    with K unless ``keep_samples``. ``origin_y``/``origin_x`` place tiles in a larger image;
    ``on_sample`` is called after each finished sample (progress bars).
    """
    if num_samples < 1 or steps < 1:
        raise ValueError(f"num_samples and steps must be >= 1, got {num_samples} and {steps}")
    b, _, h, w = cond.shape
    out_channels = getattr(model, "in_channels", cond.shape[1])
    mean = torch.zeros(b, out_channels, h, w, device=cond.device, dtype=torch.float32)
    m2 = torch.zeros_like(mean)
    kept = []
    for k in range(num_samples):
        x0 = hash_normal(seed, first_sample + k, b, out_channels, h, w, origin_y, origin_x, device=cond.device)
        x = euler_integrate(model, x0.to(cond.dtype), cond, steps).float()
        delta = x - mean
        mean = mean + delta / (k + 1)
        m2 = m2 + delta * (x - mean)
        if keep_samples:
            kept.append(x)
        if on_sample is not None:
            on_sample()
    std = torch.sqrt(m2 / num_samples)
    return Posterior(mean=mean, std=std, samples=torch.stack(kept, dim=1) if keep_samples else None)

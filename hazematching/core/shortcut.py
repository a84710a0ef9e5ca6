"""Shortcut models (Frans et al., arXiv 2410.12557): a few large steps that follow the flow.

The velocity network also sees the step size d. At d = 0 it is trained with the flow-matching loss
(the instantaneous velocity); for d > 0 it learns self-consistency: one step of 2d must land where
two steps of d land, ``s(x_t, t, 2d) = (s(x_t, t, d) + s(x_t + d s(x_t, t, d), t + d, d)) / 2``,
with the right side computed by the network itself, without gradient. Step sizes 2d run from
1/2**levels to 1, so sampling with 1, 2, 4, ... steps (``solver="shortcut"``) uses trained sizes.
"""

import torch
import torch.nn.functional as F

from .noise import _item_hash, hash32
from .path import interpolate, target_velocity

STEP_LEVELS = 7  # 2d in {1/64, ..., 1/2, 1}; the smallest d = 1/128 is bootstrapped from d = 0


def keyed_step_sizes(keys: torch.Tensor, seed: int, levels: int = STEP_LEVELS) -> torch.Tensor:
    """The half step d of each item (2d = 2**-j, j uniform in 0..levels-1), a function of (seed, key)."""
    j = hash32(_item_hash(keys, seed) ^ 0x68E31DA4) % levels
    return torch.pow(2.0, -(j.double() + 1.0)).float()


@torch.no_grad()
def consistency_target(model, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Average velocity of two steps of size d from (x_t, t); the smallest d uses the instantaneous
    velocity (d = 0), which is what the flow-matching half of the loss trains."""
    smallest = d <= 1.0001 * 2.0**-STEP_LEVELS
    d_in = torch.where(smallest, torch.zeros_like(d), d)
    first = model(x_t, cond, t, d_in).float()
    x_mid = x_t.float() + d.view(-1, 1, 1, 1) * first
    second = model(x_mid.to(x_t.dtype), cond, t + d, d_in).float()
    return 0.5 * (first + second)


def shortcut_loss(
    model,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    keys: torch.Tensor,
    seed: int,
    consistency_items: int,
) -> torch.Tensor:
    """Flow matching (d = 0) on the first ``len - consistency_items`` items, self-consistency on the
    rest, their MSEs weighted by item count. ``t`` of a consistency item is moved onto the grid of
    its step 2d, so that training sees the times that sampling with 1/2d steps visits."""
    n = x1.shape[0]
    split = n - consistency_items
    losses = []
    if split > 0:
        xt = interpolate(x0[:split], x1[:split], t[:split])
        v = model(xt, cond[:split], t[:split], torch.zeros_like(t[:split]))
        losses.append(F.mse_loss(v.float(), target_velocity(x0[:split], x1[:split]).float()) * split)
    if consistency_items > 0:
        d = keyed_step_sizes(keys[split:], seed).to(t.device)
        grid = torch.round(1.0 / (2.0 * d))  # steps of size 2d in [0, 1]
        tc = torch.floor(t[split:] * grid) / grid
        xt = interpolate(x0[split:], x1[split:], tc)
        target = consistency_target(model, xt, cond[split:], tc, d)
        v = model(xt, cond[split:], tc, 2.0 * d)
        losses.append(F.mse_loss(v.float(), target) * consistency_items)
    return torch.stack(losses).sum() / n

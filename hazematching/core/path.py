"""Guided conditional flow matching: the straight-line probability path and its training loss.

x_t = t * x1 + (1 - t) * x0 with x0 ~ N(0, I) (sigma = 0); target velocity u_t = x1 - x0.
The hazy image c is concatenated to x_t at every t ("guided" velocity field), no degradation
operator needed.
"""

import torch
import torch.nn.functional as F


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Point x_t on the straight path from noise x0 to target x1 (t has shape (batch,))."""
    t = t.view(-1, *([1] * (x1.dim() - 1)))
    return t * x1 + (1 - t) * x0


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    return x1 - x0


def cfm_loss(model, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted and the conditional target velocity at x_t = interpolate(x0, x1, t)."""
    xt = interpolate(x0, x1, t)
    v = model(xt, cond, t)
    return F.mse_loss(v.float(), target_velocity(x0, x1).float())


def mse_loss(model, x1: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Point-predictor (CARE-like) baseline objective: regress the target directly."""
    pred = model(torch.zeros_like(x1), cond)
    return F.mse_loss(pred.float(), x1.float())

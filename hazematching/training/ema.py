"""Exponential moving average of the weights, kept as a plain full-size copy on every process."""

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self, step: int) -> float:
        """Warm-up (as in diffusers): early steps follow the weights closely so a short run is usable."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, params, step: int) -> None:
        """``params``: the trained model's parameters (full tensors; gather them first under ZeRO-3)."""
        decay = self.current_decay(step)
        for ema_p, p in zip(self.model.parameters(), params):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

"""Optimiser helpers: the AdamW kernel for the device and the learning-rate schedule."""

import torch

from hazematching.config import TrainConfig


def fused_or_foreach(device: torch.device) -> dict:
    """AdamW's fused kernel (one launch for all parameters) where this torch has it for the device,
    else the multi-tensor ``foreach`` implementation; both compute the same update as the loop."""
    if device.type in ("cuda", "cpu") and "fused" in torch.optim.AdamW.__init__.__code__.co_varnames:
        return {"fused": True}
    return {"foreach": True}


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant (as the reference's Adam at a fixed lr)."""
    if config.lr_warmup_steps:
        return config.lr * min(1.0, (step + 1) / config.lr_warmup_steps)
    return config.lr

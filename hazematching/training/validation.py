"""Validation during training: a loss comparable across steps and a grid of samples."""

import numpy as np
import torch

from hazematching.config import TrainConfig
from hazematching.core import cfm_loss, keyed_normal, mse_loss, sample_posterior
from hazematching.data.dataset import FixedCropDataset
from hazematching.training.visualize import sample_grid

TIMES = torch.linspace(0.1, 0.9, 5)


@torch.no_grad()
def validation_loss(model, items: FixedCropDataset, config: TrainConfig, device, autocast) -> float:
    """Loss on fixed validation crops at 5 fixed times with fixed noise: comparable across steps."""
    losses = []
    for start in range(0, len(items), config.batch_size):
        batch = [items[i] for i in range(start, min(start + config.batch_size, len(items)))]
        target = torch.stack([b["target"] for b in batch]).to(device)
        cond = torch.stack([b["input"] for b in batch]).to(device)
        with autocast():
            if config.objective == "mse":
                losses.append(float(mse_loss(model, target, cond)) * len(batch))
                continue
            for j, t in enumerate(TIMES):
                keys = (torch.arange(start, start + len(batch)) * 10 + j).to(device)
                noise = keyed_normal(keys, config.seed + 7, *target.shape[1:])
                t_batch = torch.full((len(batch),), float(t), device=device)
                losses.append(float(cfm_loss(model, noise, target, t_batch, cond)) * len(batch) / len(TIMES))
    return sum(losses) / len(items)


@torch.no_grad()
def validation_grid(model, items: FixedCropDataset, config: TrainConfig, device, autocast) -> np.ndarray:
    """Rows of input | target | sample 1 | sample 2 | MMSE | std for the first validation crops."""
    batch = [items[i] for i in range(min(4, len(items)))]
    cond = torch.stack([b["input"] for b in batch]).to(device)
    target = torch.stack([b["target"] for b in batch])
    with autocast():
        if config.objective == "mse":
            pred = model(torch.zeros_like(cond), cond).float().cpu()
            return sample_grid(cond.cpu(), target, [pred], pred, None)
        posterior = sample_posterior(
            model, cond, num_samples=4, steps=config.sampler.steps, seed=config.sampler.seed, keep_samples=True
        )
    samples = posterior.samples.cpu()
    return sample_grid(cond.cpu(), target, [samples[:, 0], samples[:, 1]], posterior.mean.cpu(), posterior.std.cpu())

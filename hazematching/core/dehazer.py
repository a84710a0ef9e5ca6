"""The whole HazeMatching method as one module: raw widefield image in, [MMSE, std] out.

This is what the bioimage.io package runs (TorchScript or state dict): normalisation with the
training statistics, K samples of the N-step ODE solve (Euler, midpoint or Heun) with in-graph hash noise (fixed seed, so
every call and every device gives the same result), mean and std over the samples, both mapped back
to target intensities, and the std calibrated (a * std + b) when the run was calibrated. Doing the
normalisation inside keeps the result identical in every consumer, whatever pre/post-processing
ops it implements and however it tiles.
"""

import torch
from torch import nn

from .sampler import ODESampler, update_moments
from .unet import UNet


class Dehazer(nn.Module):
    def __init__(
        self,
        architecture: dict,
        input_mean: float,
        input_std: float,
        target_mean: float,
        target_std: float,
        samples: int = 8,
        steps: int = 20,
        seed: int = 0,
        std_scale: float = 1.0,
        std_offset: float = 0.0,
        solver: str = "euler",
    ):
        super().__init__()
        self.sampler = ODESampler(UNet(**architecture), architecture.get("out_channels", 1), solver)
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.samples, self.steps, self.seed = int(samples), int(steps), int(seed)
        self.std_scale, self.std_offset = float(std_scale), float(std_offset)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float32 widefield -> (B, 2, H, W): channel 0 MMSE, channel 1 std."""
        cond = (image.float() - self.input_mean) / self.input_std
        b, h, w = cond.shape[0], cond.shape[2], cond.shape[3]
        # noise keyed on positions relative to the image centre: a consumer that pads the image
        # symmetrically by the halo (bioimageio.core does) gets the noise of the unpadded image
        origin_y = torch.full([b], -(h // 2), dtype=torch.int64, device=cond.device)
        origin_x = torch.full([b], -(w // 2), dtype=torch.int64, device=cond.device)
        mean = torch.zeros_like(cond)
        m2 = torch.zeros_like(cond)
        for k in range(self.samples):
            x = self.sampler.draw(cond, k, self.steps, self.seed, origin_y, origin_x)
            mean, m2 = update_moments(mean, m2, x, k + 1)
        std = torch.sqrt(m2 / self.samples) * self.target_std
        std = self.std_scale * std + self.std_offset
        return torch.cat([mean * self.target_std + self.target_mean, std], dim=1)

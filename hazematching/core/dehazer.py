"""The whole HazeMatching method as one module: raw widefield image in, [MMSE, std] out.

This is what the bioimage.io package runs (TorchScript or state dict): normalisation with the
training statistics, K samples of the N-step ODE solve (Euler, midpoint or Heun) with in-graph hash
noise (fixed seed, so every call and every device gives the same result), mean and std over the
samples (or the velocity at the anchor x = 0, t = 0, ``mmse``), both mapped back to target
intensities, and the std calibrated (a * std + b) when the run was calibrated. Doing the
normalisation inside keeps the result identical in every consumer, whatever pre/post-processing ops
it implements and however it tiles.

Consumers pad a whole image by the declared halo before the call (bioimageio.core: symmetric;
deepImageJ and ilastik mirror at image borders). A side whose ``halo`` outer pixels mirror the
pixels next to them exactly is taken for such padding and not computed on: that side is an image
border, as in ``hazematching predict``, so a padded whole image costs no more than the image and
gives ``hazematching predict``'s result (same tiles, same noise). Real context from a neighbouring
block mirrors exactly only where it is constant (then that side is treated as an image border) and
is otherwise used as context; the output's ring is cropped by the consumer (here it repeats the
nearest computed pixel).
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .networks import build_network
from .sampler import ODESampler, update_moments
from .tiles import OVERLAP, TILE_SIZE, fit_multiple, fitted_tile, ramp, tile_spans, window


class Dehazer(nn.Module):
    def __init__(
        self,
        architecture: dict,
        input_mean: float,
        input_std: float,
        target_mean: float,
        target_std: float,
        samples: int,
        steps: int,
        seed: int,
        std_scale: float = 1.0,
        std_offset: float = 0.0,
        solver: str = "euler",
        tile_size: int = TILE_SIZE,
        overlap: int = OVERLAP,
        halo: int = 0,
        mmse: str = "samples",
        sample_noise: str = "independent",
    ):
        super().__init__()
        out_channels = architecture.get("out_channels", 1)
        self.sampler = ODESampler(build_network(architecture), out_channels, solver, sample_noise)
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.samples, self.steps, self.seed = int(samples), int(steps), int(seed)
        self.mmse = str(mmse)  # "samples": the MMSE is the samples' mean; "anchor": v(0, 0, c)
        self.std_scale, self.std_offset = float(std_scale), float(std_offset)
        stride = self.sampler.net.stride
        self.stride = int(stride)
        self.tile_size, self.overlap = window(int(tile_size), int(overlap), self.stride)
        self.fit_multiple = fit_multiple(self.sampler.net, self.stride)
        self.blend = bool(getattr(self.sampler.net, "fixed_window", False))  # cross-fade tiles (tiles.ramp)
        self.halo = int(halo)
        # channels_last weights: ~15 % faster CPU convolutions; load_state_dict and TorchScript keep it
        self.to(memory_format=torch.channels_last)

    def posterior(
        self, cond: torch.Tensor, origin_y: torch.Tensor, origin_x: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (normalised units) of the K samples of one tile."""
        mean = torch.zeros_like(cond)
        m2 = torch.zeros_like(cond)
        for k in range(self.samples):
            x = self.sampler.draw(cond, k, self.steps, self.seed, origin_y, origin_x)
            mean, m2 = update_moments(mean, m2, x, k + 1)
        if self.mmse == "anchor":  # as core.sampler.sample_posterior
            mean = self.sampler.anchor_mean(cond)
        return mean, torch.sqrt(m2 / self.samples)

    def consumer_padding(self, image: torch.Tensor) -> List[int]:
        """[top, bottom, left, right]: ``halo`` for each side whose ``halo`` outer rows/columns are
        the symmetric or reflected copy of the ones inside them, else 0."""
        m = self.halo
        h, w = image.shape[2], image.shape[3]
        if m == 0 or h < 2 * m + 2 or w < 2 * m + 2:
            return [0, 0, 0, 0]
        sides: List[int] = []
        for dim, n in ((2, h), (3, w)):
            outer_first, outer_last = image.narrow(dim, 0, m), image.narrow(dim, n - m, m)
            first = torch.equal(outer_first, image.narrow(dim, m, m).flip(dim)) or torch.equal(
                outer_first, image.narrow(dim, m + 1, m).flip(dim)
            )  # symmetric or reflect
            last = torch.equal(outer_last, image.narrow(dim, n - 2 * m, m).flip(dim)) or torch.equal(
                outer_last, image.narrow(dim, n - 2 * m - 1, m).flip(dim)
            )
            sides.append(m if first else 0)
            sides.append(m if last else 0)
        return sides

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float32 widefield -> (B, 2, H, W): channel 0 MMSE, channel 1 std."""
        cond = (image.float() - self.input_mean) / self.input_std
        top, bottom, left, right = self.consumer_padding(image)
        h, w = cond.shape[2], cond.shape[3]
        mean, std = self.dehaze(cond[:, :, top : h - bottom, left : w - right])
        std = (self.std_scale * (std * self.target_std) + self.std_offset).clamp_min(0.0)  # b < 0: never negative
        out = torch.cat([mean * self.target_std + self.target_mean, std], dim=1)
        if top + bottom + left + right > 0:
            out = F.pad(out, [left, right, top, bottom], mode="replicate")
        return out

    def dehaze(self, cond: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (normalised units) of a normalised image. Images larger than
        ``tile_size`` are processed in the overlapping tiles of ``hazematching predict`` (same spans,
        same noise): big activations thrash the CPU caches, and deepImageJ sends whole images."""
        b, height, width = cond.shape[0], cond.shape[2], cond.shape[3]
        # one border rule (``inference.predict.pad_to_stride``): the image, not each tile, is padded
        pad_h, pad_w = (-height) % self.stride, (-width) % self.stride
        if pad_h > 0 or pad_w > 0:
            cond = F.pad(cond, [0, pad_w, 0, pad_h], mode="replicate")
        h, w = cond.shape[2], cond.shape[3]
        tile_y = fitted_tile(h, self.tile_size, self.overlap, self.fit_multiple)
        tile_x = fitted_tile(w, self.tile_size, self.overlap, self.fit_multiple)
        th, tw = min(tile_y, h), min(tile_x, w)
        mean = torch.zeros_like(cond)
        std = torch.zeros_like(cond)
        weight = torch.zeros_like(cond)
        for y0, ky0, ky1 in tile_spans(h, tile_y, self.overlap):
            for x0, kx0, kx1 in tile_spans(w, tile_x, self.overlap):
                # noise keyed on positions relative to the image centre, as in ``hazematching predict``
                origin_y = torch.full([b], y0 - height // 2, dtype=torch.int64, device=cond.device)
                origin_x = torch.full([b], x0 - width // 2, dtype=torch.int64, device=cond.device)
                tile_mean, tile_std = self.posterior(cond[:, :, y0 : y0 + th, x0 : x0 + tw], origin_y, origin_x)
                if self.blend:
                    wy = torch.tensor(ramp(y0, th, h, self.overlap), dtype=cond.dtype, device=cond.device)
                    wx = torch.tensor(ramp(x0, tw, w, self.overlap), dtype=cond.dtype, device=cond.device)
                    ramps = wy[:, None] * wx[None, :]
                    weight[:, :, y0 : y0 + th, x0 : x0 + tw] += ramps
                    mean[:, :, y0 : y0 + th, x0 : x0 + tw] += ramps * tile_mean
                    std[:, :, y0 : y0 + th, x0 : x0 + tw] += ramps * tile_std
                    continue
                mean[:, :, ky0:ky1, kx0:kx1] = tile_mean[:, :, ky0 - y0 : ky1 - y0, kx0 - x0 : kx1 - x0]
                std[:, :, ky0:ky1, kx0:kx1] = tile_std[:, :, ky0 - y0 : ky1 - y0, kx0 - x0 : kx1 - x0]
        if self.blend:
            mean, std = mean / weight, std / weight
        return mean[:, :, :height, :width], std[:, :, :height, :width]

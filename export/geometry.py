"""The sizes a bioimage.io consumer sees: the halo it adds around blocks, the smallest input and the size step."""

from dataclasses import dataclass

import torch

from hazematching.core import networks
from hazematching.run import RunError


def receptive_radius(net: torch.nn.Module, size: int = 257) -> int:
    """``core.networks.receptive_radius``; a network whose field is not local cannot be tiled by consumers."""
    radius = networks.receptive_radius(net, size)
    if radius is None:
        raise RunError(
            f"receptive field reaches the probe border ({size // 2} px): attention or non-local layers cannot be tiled"
        )
    return radius


@dataclass(frozen=True)
class Geometry:
    """Sizes the consumers see: the halo they add, the smallest input and the size step."""

    halo: int
    min_size: int
    step: int

    def fit(self, size: int) -> int:
        """The largest accepted size (min + k * step) not above ``size``, at least ``min_size``."""
        return max(self.min_size, size - (size - self.min_size) % self.step)

    @classmethod
    def of(cls, net: torch.nn.Module, tile_size: int = 0) -> "Geometry":
        stride = net.stride
        if getattr(net, "fixed_window", False):
            # global attention: no finite receptive field; blocks of at least one tile, whose outer
            # quarter-tile is context, as in the model's own tiling
            halo = -(-(tile_size // 4) // stride) * stride
            return cls(halo=halo, min_size=max(tile_size, (2 * halo // stride + 1) * stride), step=1)
        halo = -(-receptive_radius(net) // stride) * stride
        # every size from min on (step 1): the model pads the image to its stride itself (one border
        # rule, core/dehazer.py); min leaves a non-empty centre inside the consumer's halo
        return cls(halo=halo, min_size=(2 * halo // stride + 1) * stride, step=1)

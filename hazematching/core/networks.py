"""The velocity networks by kind, built from a plain dict (what a run's config.json and an exported
package's RDF store): ``{"kind": "reference", ...}``; no ``kind`` means our U-Net, so every run
written before the second network existed builds as before."""

from torch import nn

from .reference_unet import ReferenceUNet
from .unet import UNet

NETWORKS = {"unet": UNet, "reference": ReferenceUNet}


def build_network(architecture: dict) -> nn.Module:
    """``NETWORKS[kind](**rest)``; raises ValueError for an unknown kind."""
    kwargs = dict(architecture)
    kind = kwargs.pop("kind", "unet")
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; expected one of {', '.join(NETWORKS)}")
    return NETWORKS[kind](**kwargs)


def receptive_radius(net: nn.Module, size: int = 257) -> int | None:
    """Largest distance in pixels at which an input pixel still changes an output pixel (weights made
    random, so no trained zero can hide a path): the halo a tiling consumer must add. None when the
    field reaches the probe's border (attention or other non-local layers)."""
    import copy

    import torch

    with torch.inference_mode(False), torch.enable_grad():  # callers may be predicting
        probe = copy.deepcopy(net).float().cpu()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in probe.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        centre = size // 2
        cond = torch.zeros(1, 1, size, size, requires_grad=True)
        x = torch.zeros(1, 1, size, size, requires_grad=True)
        t = torch.tensor([0.5]) if getattr(probe, "time_conditioning", True) else None
        probe(x, cond, t)[0, 0, centre, centre].backward()
        grad = (cond.grad.abs() + x.grad.abs())[0, 0]
    ys, xs = torch.nonzero(grad > 0, as_tuple=True)
    radius = int(max((ys - centre).abs().max(), (xs - centre).abs().max()))
    return None if radius >= centre else radius

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

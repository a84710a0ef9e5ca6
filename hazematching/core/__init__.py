"""The HazeMatching method with torch as its only dependency (shippable inside a model package)."""

from .noise import hash_normal
from .path import cfm_loss, interpolate, mse_loss, sample_time, target_velocity
from .sampler import Posterior, euler_integrate, sample_posterior
from .unet import UNet

__all__ = [
    "Posterior",
    "UNet",
    "cfm_loss",
    "euler_integrate",
    "hash_normal",
    "interpolate",
    "mse_loss",
    "sample_posterior",
    "sample_time",
    "target_velocity",
]

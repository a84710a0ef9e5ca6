"""The HazeMatching method with torch as its only dependency (shippable inside a model package)."""

from .dehazer import Dehazer
from .noise import hash_normal
from .path import cfm_loss, interpolate, mse_loss, sample_time, target_velocity
from .sampler import EulerSampler, Posterior, sample_posterior, update_moments
from .unet import UNet

__all__ = [
    "Dehazer",
    "EulerSampler",
    "Posterior",
    "UNet",
    "cfm_loss",
    "hash_normal",
    "interpolate",
    "mse_loss",
    "sample_posterior",
    "sample_time",
    "target_velocity",
    "update_moments",
]

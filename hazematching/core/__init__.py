"""The HazeMatching method with torch as its only dependency (shippable inside a model package)."""

from .dehazer import Dehazer
from .noise import hash_normal
from .path import cfm_loss, interpolate, mse_loss, sample_time, target_velocity
from .sampler import SOLVERS, ODESampler, Posterior, evaluations_per_step, sample_posterior, update_moments
from .unet import UNet

__all__ = [
    "SOLVERS",
    "Dehazer",
    "ODESampler",
    "Posterior",
    "UNet",
    "cfm_loss",
    "evaluations_per_step",
    "hash_normal",
    "interpolate",
    "mse_loss",
    "sample_posterior",
    "sample_time",
    "target_velocity",
    "update_moments",
]

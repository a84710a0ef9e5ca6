"""The HazeMatching method with torch as its only dependency (shippable inside a model package)."""

from .dehazer import Dehazer
from .noise import hash_normal, keyed_normal, keyed_time
from .path import cfm_loss, interpolate, mse_loss, target_velocity
from .sampler import SOLVERS, ODESampler, Posterior, evaluations_per_step, sample_posterior, update_moments
from .shortcut import keyed_step_sizes, shortcut_loss
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
    "keyed_normal",
    "keyed_step_sizes",
    "keyed_time",
    "interpolate",
    "mse_loss",
    "sample_posterior",
    "shortcut_loss",
    "target_velocity",
    "update_moments",
]

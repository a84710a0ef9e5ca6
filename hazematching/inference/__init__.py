"""Inference: one image through the sampler (``predict_array``: tiles, batching, the fast network)
and whole experiments (N-D stacks, many files, several processes, resumable)."""

from hazematching.inference.predict import Prediction, predict_array, resolve_device

__all__ = ["Prediction", "predict_array", "resolve_device"]

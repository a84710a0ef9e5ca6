"""Evaluation against targets: metrics, perceptual scores and uncertainty calibration."""

from hazematching.evaluation.evaluate import calibrate, evaluate

__all__ = ["calibrate", "evaluate"]

"""Training: the accelerate loop (CPU, GPUs, DDP, multi-node, DeepSpeed), its flags, checkpoints,
weight average and sample grids. ``accelerate launch -m hazematching.training`` trains from an
installed package; ``trainer/train.py`` is the same entry as a script."""

from hazematching.training.trainer import main

__all__ = ["main"]

"""HazeMatching: dehazing fluorescence microscopy with guided conditional flow matching."""

__version__ = "0.1.0"


def load_model(run_dir, device="cpu"):
    """Network, normalisation and config of a training run directory (see ``hazematching.run``)."""
    from .run import load_model as _load

    return _load(run_dir, device)

"""HazeMatching: dehazing fluorescence microscopy with guided conditional flow matching."""

from hazematching.version import __version__

__all__ = ["__version__", "load_model"]


def load_model(run_dir, device="cpu"):
    """Network, normalisation and config of a training run directory (see ``hazematching.run``)."""
    from hazematching.run import load_model as _load

    return _load(run_dir, device)

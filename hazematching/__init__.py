"""HazeMatching: dehazing fluorescence microscopy with guided conditional flow matching."""

__version__ = "0.1.0"

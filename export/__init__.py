"""bioimage.io export of HazeMatching runs (installed as ``hazematching.export``)."""

from .geometry import receptive_radius
from .package import FORMATS, export_model
from .weights import architecture_source

__all__ = ["FORMATS", "architecture_source", "export_model", "receptive_radius"]

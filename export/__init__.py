"""bioimage.io export of HazeMatching runs (installed as ``hazematching.export``)."""

from .package import FORMATS, architecture_source, export_model, receptive_radius

__all__ = ["FORMATS", "architecture_source", "export_model", "receptive_radius"]

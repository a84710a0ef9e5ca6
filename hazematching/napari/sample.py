"""File › Open Sample › HazeMatching: a simulated widefield/confocal pair shipped with the package."""

import tifffile

from hazematching.data.demo_pair import DEMO_PAIR


def sample_pair() -> list[tuple]:
    """The widefield input (what the plugin dehazes) and its confocal target (what it should look like)."""
    confocal, widefield = tifffile.imread(DEMO_PAIR)
    meta = {"metadata": {"source": "hazematching simulate (microsim), 100 nm pixels"}}
    return [
        (confocal, {"name": "confocal (target)", "visible": False, **meta}, "image"),
        (widefield, {"name": "widefield", **meta}, "image"),
    ]

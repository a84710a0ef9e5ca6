"""A small simulated widefield/confocal pair shipped with the package, so that demos, napari's
sample data and tests have an image without microsim or a download."""

from pathlib import Path

DEMO_PAIR = Path(__file__).with_name("demo_pair.tif")  # (2, 256, 256) uint16: confocal, widefield

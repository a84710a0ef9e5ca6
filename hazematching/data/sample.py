"""A small simulated widefield/confocal pair shipped with the package, so that demos, the napari
sample and tests have an image without microsim or a download."""

from pathlib import Path

SAMPLE_PAIR = Path(__file__).with_name("sample_pair.tif")  # (2, 256, 256) uint16: confocal, widefield

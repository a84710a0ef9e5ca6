"""Overlapping tiles whose kept regions partition the image (spans from ``core.tiles``, shared with
the exported model).

Tiles have one fixed size (so they batch). Tiles never reach outside the image, so a border tile
sees exactly the border that a whole-image prediction sees; with hash noise keyed on image
coordinates and a network of bounded receptive field, stitched tiles then equal the whole-image
result up to what lies beyond ``overlap / 2`` pixels.
"""

from dataclasses import dataclass

import numpy as np

from hazematching.core.tiles import fitted_tile, ramp, tile_spans


@dataclass(frozen=True)
class Span:
    start: int  # tile covers [start, start + size)
    keep_start: int  # and contributes [keep_start, keep_end) to the output
    keep_end: int


def spans(length: int, tile: int, overlap: int) -> list[Span]:
    """1D tiling of ``length`` pixels with tiles of ``min(tile, length)``."""
    if tile <= overlap:
        raise ValueError(f"tile size {tile} must be larger than the overlap {overlap}")
    return [Span(*span) for span in tile_spans(length, tile, overlap)]


@dataclass(frozen=True)
class Tile:
    y: Span
    x: Span

    def window(self, height: int, width: int) -> tuple[slice, slice]:
        return slice(self.y.start, self.y.start + height), slice(self.x.start, self.x.start + width)

    def kept(self) -> tuple[slice, slice]:
        """Kept region in image coordinates."""
        return slice(self.y.keep_start, self.y.keep_end), slice(self.x.keep_start, self.x.keep_end)

    def blend_weights(self, height: int, width: int, image_height: int, image_width: int, overlap: int) -> np.ndarray:
        """(height, width) cross-fade weights of this tile (``core.tiles.ramp``)."""
        wy = ramp(self.y.start, height, image_height, overlap)
        wx = ramp(self.x.start, width, image_width, overlap)
        return np.outer(np.asarray(wy, np.float32), np.asarray(wx, np.float32))

    def kept_in_tile(self) -> tuple[slice, slice]:
        """Kept region in tile coordinates."""
        return (
            slice(self.y.keep_start - self.y.start, self.y.keep_end - self.y.start),
            slice(self.x.keep_start - self.x.start, self.x.keep_end - self.x.start),
        )


def tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> tuple[list[Tile], int, int]:
    """All tiles of an image and the (common) tile height and width; per axis the tile size is
    ``fitted_tile``'s (at least ``tile``, a multiple of ``multiple``), as in the exported model."""
    tile_y, tile_x = fitted_tile(height, tile, overlap, multiple), fitted_tile(width, tile, overlap, multiple)
    ys, xs = spans(height, tile_y, overlap), spans(width, tile_x, overlap)
    return [Tile(y, x) for y in ys for x in xs], min(tile_y, height), min(tile_x, width)

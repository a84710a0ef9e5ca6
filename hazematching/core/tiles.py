"""1D tile spans whose kept regions partition an axis (TorchScript-compatible, so the exported model
tiles exactly like ``hazematching predict``).

Tiles have one size, start at multiples of ``tile - overlap`` and the last one is shifted to end at
the border; where two tiles overlap, each keeps the half nearer its centre. ``fitted_tile`` picks,
per axis, the size slightly above the requested one that covers the axis with the least work.
"""

from typing import List, Tuple

# Default tiling of every entry point (predict, experiments, evaluate, export, the exported model):
# tiles of at least TILE_SIZE px overlapping by OVERLAP px (each keeps the half of the overlap nearer
# its centre, so OVERLAP / 2 px of context lie beyond every kept pixel).
TILE_SIZE = 256
OVERLAP = 64


def tile_spans(length: int, tile: int, overlap: int) -> List[Tuple[int, int, int]]:
    """(start, keep_start, keep_end) per tile: the tile covers [start, start + min(tile, length))
    and contributes [keep_start, keep_end) to the output."""
    if length <= tile:
        return [(0, 0, length)]
    stride = tile - overlap
    starts: List[int] = []
    start = 0
    while start < length - tile:
        starts.append(start)
        start += stride
    starts.append(length - tile)
    spans: List[Tuple[int, int, int]] = []
    for i in range(len(starts)):
        keep_start = 0 if i == 0 else (starts[i - 1] + starts[i] + tile) // 2
        keep_end = length if i == len(starts) - 1 else (starts[i] + starts[i + 1] + tile) // 2
        spans.append((starts[i], keep_start, keep_end))
    return spans


def window(tile_size: int, overlap: int, stride: int) -> Tuple[int, int]:
    """(tile, overlap) for a requested tile size and overlap: the tile a multiple of the network's
    ``stride`` (at least one stride), the overlap at most half a tile. Every entry point (predict, the
    exported model) tiles with these."""
    tile = max(stride, tile_size - tile_size % stride)
    return tile, min(overlap, tile // 2)


def fit_multiple(net, stride: int) -> int:
    """What ``fitted_tile`` may grow tiles by: ``stride``, or 0 for a network whose output depends on
    the whole window (``fixed_window``: global attention), which keeps the size it was trained at."""
    return 0 if getattr(net, "fixed_window", False) else stride


def ramp(start: int, size: int, length: int, overlap: int) -> List[float]:
    """Cross-fade weights along one axis of a tile that starts at ``start`` (``size`` px of an axis of
    ``length``): rising linearly over ``overlap`` px from each tile edge inside the image, 1 elsewhere.
    Fixed-window networks (global attention) blend overlapping tiles with these, normalised by their
    sum, instead of cutting at the middle of the overlap: two windows see different context, and a
    cut would show it as a seam."""
    weights: List[float] = []
    for i in range(size):
        distance = size
        if start > 0:
            distance = min(distance, i)
        if start + size < length:
            distance = min(distance, size - 1 - i)
        weights.append(min(1.0, (distance + 0.5) / overlap) if overlap > 0 else 1.0)
    return weights


def fitted_tile(length: int, tile: int, overlap: int, multiple: int) -> int:
    """The tile size in [tile, tile + (tile - overlap) // 4], a multiple of ``multiple``, that covers
    ``length`` with the fewest network pixels (ties: the smallest). E.g. 1024 px takes 5 tiles of
    256 but 4 of 304, and 1104 px 6 tiles of 256 but 5 of 272. ``multiple`` 0: always ``tile``."""
    if length <= tile or multiple <= 0:
        return tile
    best = tile
    best_cost = len(tile_spans(length, tile, overlap)) * tile
    size = tile + multiple
    while size <= tile + (tile - overlap) // 4 and size <= length:
        cost = len(tile_spans(length, size, overlap)) * size
        if cost < best_cost:
            best, best_cost = size, cost
        size += multiple
    return best

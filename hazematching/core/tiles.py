"""1D tile spans whose kept regions partition an axis (TorchScript-compatible, so the exported model
tiles exactly like ``hazematching predict``).

Tiles have one size, start at multiples of ``tile - overlap`` and the last one is shifted to end at
the border; where two tiles overlap, each keeps the half nearer its centre.
"""

from typing import List, Tuple


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

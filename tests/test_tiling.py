import numpy as np
import pytest

from hazematching.tiling import spans, tiles


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 8), (64, 64, 16), (30, 64, 16), (1000, 256, 64), (257, 128, 32)])
def test_kept_regions_partition_the_axis(length, tile, overlap):
    result = spans(length, tile, overlap)
    covered = np.zeros(length, int)
    for s in result:
        assert 0 <= s.start and s.start + min(tile, length) <= length  # tiles stay inside the image
        assert s.start <= s.keep_start < s.keep_end <= s.start + min(tile, length)
        covered[s.keep_start : s.keep_end] += 1
    assert (covered == 1).all()
    # away from the image border, every kept pixel has at least overlap/2 context on both sides
    for s in result:
        if s.keep_start > 0:
            assert s.keep_start - s.start >= overlap // 2
        if s.keep_end < length:
            assert s.start + tile - s.keep_end >= overlap // 2


def test_tiles_grid_and_errors():
    all_tiles, th, tw = tiles(100, 50, 32, 8)
    assert (th, tw) == (32, 32)
    assert len(all_tiles) == len(spans(100, 32, 8)) * len(spans(50, 32, 8))
    with pytest.raises(ValueError, match="larger than the overlap"):
        spans(100, 16, 16)

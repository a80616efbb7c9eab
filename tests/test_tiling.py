"""Tile grid properties."""

from hypothesis import given
from hypothesis import strategies as st

from napari_instseg.core.engine.tiling import (
    blend_window,
    ownership_bounds,
    tile_grid,
    tile_starts,
)


@given(st.integers(1, 5000), st.integers(32, 1024), st.data())
def test_tiles_cover_the_axis_with_the_overlap_and_ownership_partitions_it(length, tile, data):
    overlap = data.draw(st.integers(0, tile // 2))
    starts = tile_starts(length, tile, overlap)
    ends = [min(s + tile, length) for s in starts]
    assert starts[0] == 0 and ends[-1] == length
    assert all(s >= 0 and e - s == min(tile, length) for s, e in zip(starts, ends))
    assert all(ends[i] - starts[i + 1] >= overlap for i in range(len(starts) - 1))
    bounds = ownership_bounds(starts, tile, length)
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))
    for (lo, hi), s, e in zip(bounds, starts, ends):
        assert s <= lo <= hi <= e  # each tile owns only pixels it sees


def test_grid_is_row_major_and_window_is_positive():
    grid = tile_grid(300, 200, 128, 32)
    assert [t.row for t in grid] == sorted(t.row for t in grid)
    window = blend_window(128, 16)
    assert window.min() > 0 and window.max() == 1.0 and window[64] == 1.0


def test_blended_classes_take_the_first_of_equal_probabilities():
    import torch

    from napari_instseg.core.engine.blending import BandBlender
    from napari_instseg.core.engine.tiling import Tile

    blender = BandBlender(
        (1, 4), 3, ramp=0, instance_class=1, device=torch.device("cpu"), keep_probabilities=False
    )
    probabilities = torch.tensor(
        [[[0.2, 0.4, 0.1, 0.5]], [[0.4, 0.4, 0.45, 0.5]], [[0.4, 0.2, 0.45, 0.0]]]
    )
    blender.add(Tile(0, 1, 0, 4, own_y=(0, 1), own_x=(0, 4), row=0), probabilities)
    blender.close_rows(1)
    assert blender.classes.tolist() == [[1, 0, 1, 0]]

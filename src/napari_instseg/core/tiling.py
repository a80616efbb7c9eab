"""Tile grids with overlap, blending windows and seam ownership."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``.

    Consecutive tiles overlap by at least ``overlap``; the last tile is
    shifted back to end at ``length`` so no tile is padded.
    """
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def ownership_bounds(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The part of the axis each tile owns: seams sit in the middle of overlaps,
    so an object owned by a tile lies as far from that tile's edge as possible."""
    ends = [min(s + tile, length) for s in starts]
    cuts = [0] + [(ends[i] + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [length]
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def blend_window(length: int, ramp: int) -> np.ndarray:
    """1D weights that rise linearly over ``ramp`` pixels at both ends (never 0)."""
    if ramp <= 0:
        return np.ones(length, np.float32)
    i = np.arange(length, dtype=np.float32)
    return np.clip(np.minimum(i + 0.5, length - i - 0.5) / ramp, 1e-3, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Tile:
    """One tile of a 2D grid: its pixel window and the window it owns."""

    y0: int
    y1: int
    x0: int
    x1: int
    own_y: tuple[int, int]
    own_x: tuple[int, int]
    row: int


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles in raster order (row by row)."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    own_ys, own_xs = ownership_bounds(ys, tile, height), ownership_bounds(xs, tile, width)
    return [
        Tile(y, min(y + tile, height), x, min(x + tile, width), oy, ox, row)
        for row, (y, oy) in enumerate(zip(ys, own_ys))
        for x, ox in zip(xs, own_xs)
    ]

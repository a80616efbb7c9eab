"""Out-of-memory fallback and the progress count of tiles across slices.

A slice's generator yields once per tile. ``with_memory_fallback`` restarts
it with smaller tiles when memory runs out (and on a CPU copy of the model
when even small tiles do not fit on the GPU); ``TileCounter`` turns the
per-tile steps of all slices into ``Progress`` with a total that follows
those restarts.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import torch

from ..types import Progress

MIN_TILE_SIZE = 128


class TileCounter:
    """Tiles done and announced across the slices of one call."""

    def __init__(self):
        self.done = 0
        self.total = 0

    def announce(self, total: int) -> None:
        """Set the total once, from the first slice's grid (all slices share a shape)."""
        self.total = self.total or total

    def add(self, tiles: int) -> None:
        """Count a further pass over a slice (e.g. after measuring its objects)."""
        self.total += tiles

    def run(self, slice_steps, message: str):
        """Yield a Progress per tile of a slice generator (None per tile, a
        ``Retry`` when it restarts with smaller tiles) and return its result."""
        while True:
            try:
                step = next(slice_steps)
            except StopIteration as stop:
                return stop.value
            if isinstance(step, Retry):
                self.total += step
                continue
            self.done += 1
            yield Progress(self.done, self.total, message)


class Retry(int):
    """Yielded by ``with_memory_fallback`` when it restarts a slice: the
    change in the number of tile steps announced for it."""


def with_memory_fallback(run_slice, loaded, tile_size: int, overlap: int, grid):
    """Run one slice; on out-of-memory retry with half-size tiles, and when
    even the smallest tiles do not fit on the GPU, continue on a CPU copy of
    the model (the caller's model stays where it is).

    ``run_slice(loaded, tile_size, overlap)`` makes the slice's generator;
    ``grid(tile_size, overlap)`` gives its tiles (to count them).
    Yields None per tile, or a ``Retry`` when it restarts the slice, and
    returns the slice's result.
    """
    original = tile_size, overlap
    announced = len(grid(tile_size, overlap))
    while True:
        done = 0
        try:
            generator = run_slice(loaded, tile_size, overlap)
            while True:
                try:
                    next(generator)
                except StopIteration as stop:
                    return stop.value
                done += 1
                yield None
        except torch.OutOfMemoryError:
            if loaded.device.type == "cuda":
                torch.cuda.empty_cache()
            if tile_size > MIN_TILE_SIZE:
                tile_size = max(MIN_TILE_SIZE, tile_size // 2)
                overlap = min(overlap, tile_size // 4)
                warnings.warn(f"out of memory: retrying with {tile_size} px tiles", stacklevel=2)
            elif loaded.device.type != "cpu":
                warnings.warn(
                    "out of GPU memory even with small tiles: continuing on the CPU",
                    stacklevel=2,
                )
                loaded = _cpu_copy(loaded)
                tile_size, overlap = original
            else:
                raise MemoryError(
                    "not enough memory even with the smallest tiles; close other programs "
                    "or use a smaller image"
                ) from None
            # the tiles already done stay counted; the rest are replaced by the new grid
            new = len(grid(tile_size, overlap))
            yield Retry(new - (announced - done))
            announced = new


def _cpu_copy(loaded):
    """A CPU copy of the module the engine runs (not of the training module
    beside it too); the model's own tile predictor, if any, comes along."""
    cpu = torch.device("cpu")
    module = copy.deepcopy(loaded.predictor).to(cpu)
    return dataclasses.replace(loaded, module=module, inference_module=None, device=cpu)

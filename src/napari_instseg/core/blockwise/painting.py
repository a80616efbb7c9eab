"""One label image from the objects that blocks return, painted region by
region so that a label image larger than memory is written, not held.

The rule is the one ``Detections.paint`` follows within an image: objects are
painted highest score first and only onto background; an object left with
under half of its pixels is a duplicate (kept by two blocks, its centre seen
on either side of a core edge) and is dropped. Which objects survive is
decided once, globally (``keep_objects``); painting then goes one output
region at a time (``paint_regions``) and gives the same pixels as painting
everything at once, because the rule is local to each pixel.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass

import numpy as np

from ..draining import drain
from ..labels.postprocess import smallest_label_dtype
from ..types import Progress

DUPLICATE_SHARE = 0.5  # an object whose free pixels fall below this share is a duplicate
CELL = 256  # side of the cells of the spatial index, px (objects are far smaller)


@dataclass
class BlockObject:
    y0: int
    x0: int
    mask: np.ndarray  # bool crop at (y0, x0) in image pixels
    score: float
    class_id: int

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]


class _CellIndex:
    """Which objects' boxes touch each CELL x CELL square of the image."""

    def __init__(self):
        self.cells: dict[tuple[int, int], list[int]] = defaultdict(list)

    @staticmethod
    def _keys(y0, x0, y1, x1):
        for cy in range(y0 // CELL, (y1 - 1) // CELL + 1):
            for cx in range(x0 // CELL, (x1 - 1) // CELL + 1):
                yield cy, cx

    def add(self, i: int, obj: BlockObject) -> None:
        for key in self._keys(obj.y0, obj.x0, obj.y1, obj.x1):
            self.cells[key].append(i)

    def near(self, y0, x0, y1, x1) -> list[int]:
        """Objects whose cells meet the window, in the order they were added."""
        found = {i for key in self._keys(y0, x0, y1, x1) for i in self.cells.get(key, ())}
        return sorted(found)


def keep_objects(objects: Iterable[BlockObject]) -> list[BlockObject]:
    """The objects to paint, highest score first, duplicates dropped."""
    ordered = sorted(objects, key=lambda o: -o.score)
    kept: list[BlockObject] = []
    index = _CellIndex()
    for obj in ordered:
        taken = np.zeros(obj.mask.shape, bool)
        for i in index.near(obj.y0, obj.x0, obj.y1, obj.x1):
            _overlay(taken, obj.y0, obj.x0, kept[i])
        free = int((obj.mask & ~taken).sum())
        if free < DUPLICATE_SHARE * int(obj.mask.sum()):
            continue
        index.add(len(kept), obj)
        kept.append(obj)
    return kept


def _overlay(canvas: np.ndarray, y0: int, x0: int, obj: BlockObject, value=True) -> None:
    """Set ``canvas`` (a window at y0, x0) to ``value`` where ``obj`` is and
    the canvas is still 0 (False)."""
    ys = slice(max(y0, obj.y0), min(y0 + canvas.shape[0], obj.y1))
    xs = slice(max(x0, obj.x0), min(x0 + canvas.shape[1], obj.x1))
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return
    part = obj.mask[ys.start - obj.y0 : ys.stop - obj.y0, xs.start - obj.x0 : xs.stop - obj.x0]
    window = canvas[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    window[part & (window == 0)] = value


def paint_regions(
    shape: tuple[int, int],
    kept: list[BlockObject],
    regions: list[tuple[int, int, int, int]],
    make_labels: Callable[[tuple[int, int], np.dtype], object] | None = None,
):
    """(labels, boxes, areas): ``kept`` painted as ids 1..N into an array from
    ``make_labels(shape, dtype)`` (default: zeros in memory), one region
    (y0, x0, y1, x1) at a time; boxes (y_min, x_min, y_max, x_max, max
    exclusive) and pixel counts of what each id got."""
    dtype = np.dtype(smallest_label_dtype(len(kept)))
    labels = np.zeros(shape, dtype) if make_labels is None else make_labels(shape, dtype)
    boxes, areas = drain(iter_paint_regions(kept, regions, labels))
    return labels, boxes, areas


def iter_paint_regions(
    kept: list[BlockObject], regions: list[tuple[int, int, int, int]], labels, first_id: int = 1
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Paint ``kept`` as ids first_id, first_id + 1, ... into ``labels`` (any
    array that takes 2D slice assignment), region by region, yielding a
    ``Progress`` per region; returns the (boxes, areas) of what each got."""
    index = _CellIndex()
    for i, obj in enumerate(kept):
        index.add(i, obj)
    big = np.iinfo(np.int64).max
    boxes = np.array([[big, big, -1, -1]] * len(kept), np.int64).reshape(-1, 4)
    areas = np.zeros(len(kept), np.int64)
    for done, (y0, x0, y1, x1) in enumerate(regions, 1):
        window = np.zeros((y1 - y0, x1 - x0), labels.dtype)
        for i in index.near(y0, x0, y1, x1):
            _overlay(window, y0, x0, kept[i], i + 1)  # local ids: 1..len(kept)
        _measure(window, y0, x0, boxes, areas)
        if first_id != 1:
            window[window > 0] += np.asarray(first_id - 1, labels.dtype)
        labels[y0:y1, x0:x1] = window
        yield Progress(done, len(regions), "writing labels")
    boxes[areas == 0] = 0
    return boxes, areas


def _measure(window: np.ndarray, y0: int, x0: int, boxes: np.ndarray, areas: np.ndarray) -> None:
    """Grow each id's box and pixel count by what it got in ``window``."""
    from scipy import ndimage

    ids = np.unique(window)
    ids = ids[ids > 0]
    if not len(ids):
        return
    slices = ndimage.find_objects(window, max_label=int(ids.max()))
    counts = np.bincount(window.ravel(), minlength=int(ids.max()) + 1)
    for label in ids:
        sl, row = slices[label - 1], label - 1
        boxes[row, 0] = min(boxes[row, 0], sl[0].start + y0)
        boxes[row, 1] = min(boxes[row, 1], sl[1].start + x0)
        boxes[row, 2] = max(boxes[row, 2], sl[0].stop + y0)
        boxes[row, 3] = max(boxes[row, 3], sl[1].stop + x0)
        areas[row] += counts[label]

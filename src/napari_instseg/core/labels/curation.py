"""Hand-curation of instance labels: merge, split, remove small objects, fill
holes, relabel. Each function returns the edit as ``(indices, values)`` of
the pixels that change, which the caller writes (napari's
``Labels.data_setitem`` keeps them undoable); the labels are not modified.

All work on a 2D label image or a stack of them (split: on one 2D slice).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..types import InputError
from .postprocess import small_ids

Edit = tuple[tuple[np.ndarray, ...], np.ndarray]


def _edit(labels: np.ndarray, changed: np.ndarray, values: np.ndarray) -> Edit:
    index = np.nonzero(changed)
    return index, np.asarray(values, labels.dtype)


def merge(labels: np.ndarray, ids) -> Edit:
    """All of ``ids`` become the smallest of them."""
    ids = sorted({int(i) for i in ids if int(i) > 0})
    if len(ids) < 2:
        raise InputError("choose at least two objects to merge")
    changed = np.isin(labels, ids[1:])
    return _edit(labels, changed, np.full(int(changed.sum()), ids[0]))


def split(
    labels: np.ndarray, seeds, image: np.ndarray | None = None, new_id: int | None = None
) -> Edit:
    """Split the object under two or more ``(row, col)`` seeds of a 2D label
    image by seeded watershed: on the image's intensity (bright objects: the
    dark valley between them) when given, else on the object's distance map.
    The part of the first seed keeps its id; the others get new ids from
    ``new_id`` (default: above the largest id)."""
    if labels.ndim != 2:
        raise InputError("split works on one 2D slice")
    seeds = [tuple(int(round(c)) for c in seed) for seed in seeds]
    if len(seeds) < 2:
        raise InputError("place two points on the object to split")
    for y, x in seeds:
        if not (0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]):
            raise InputError("a split point lies outside the image")
    under = {int(labels[y, x]) for y, x in seeds}
    if len(under) != 1 or 0 in under:
        raise InputError("put every split point on the same object")
    from skimage.segmentation import watershed

    label_id = under.pop()
    where = ndimage.find_objects((labels == label_id).astype(np.uint8))[0]
    mask = labels[where] == label_id
    markers = np.zeros(mask.shape, np.int32)
    for k, (y, x) in enumerate(seeds, start=1):
        markers[y - where[0].start, x - where[1].start] = k
    if image is not None:
        gray = np.asarray(image[where], float)
        gray = gray.mean(-1) if gray.ndim == 3 else gray
        surface = -ndimage.gaussian_filter(gray, 1)
    else:
        surface = -ndimage.distance_transform_edt(mask)
    parts = watershed(surface, markers, mask=mask)
    first_new = int(labels.max()) + 1 if new_id is None else int(new_id)
    new_values = np.where(parts == 1, label_id, first_new + parts - 2)
    changed = np.zeros(labels.shape, bool)
    changed[where] = mask & (parts > 1)
    values = new_values[changed[where]]
    return _edit(labels, changed, values)


def remove_small(labels: np.ndarray, min_size: int) -> Edit:
    """Objects under ``min_size`` pixels (per slice for stacks) are erased."""
    planes = labels.reshape(-1, *labels.shape[-2:])
    changed = np.stack([_small(plane, min_size) for plane in planes]).reshape(labels.shape)
    return _edit(labels, changed, np.zeros(int(changed.sum())))


def _small(plane: np.ndarray, min_size: int) -> np.ndarray:
    return small_ids(plane, min_size)[plane]


def fill_holes(labels: np.ndarray) -> Edit:
    """Background enclosed by one object becomes that object."""
    planes = labels.reshape(-1, *labels.shape[-2:])
    changed = np.zeros(planes.shape, bool)
    values = np.zeros(planes.shape, labels.dtype)
    for k, plane in enumerate(planes):
        for label_id, where in enumerate(ndimage.find_objects(plane), start=1):
            if where is None:
                continue
            mask = plane[where] == label_id
            holes = ndimage.binary_fill_holes(mask) & (plane[where] == 0)
            if holes.any():
                changed[k][where] |= holes
                values[k][where][holes] = label_id
    changed = changed.reshape(labels.shape)
    return _edit(labels, changed, values.reshape(labels.shape)[changed])


def relabel_consecutive(labels: np.ndarray) -> tuple[Edit, dict[int, int]]:
    """Ids renumbered 1..N in order; the edit and the {old: new} mapping."""
    present = np.unique(labels)
    present = present[present > 0]
    mapping = {int(old): new for new, old in enumerate(present, start=1) if int(old) != new}
    if not mapping:
        return (tuple(np.zeros(0, np.int64) for _ in labels.shape), np.zeros(0, labels.dtype)), {}
    lut = np.arange(int(present.max()) + 1)
    for old, new in mapping.items():
        lut[old] = new
    changed = np.isin(labels, list(mapping))
    return _edit(labels, changed, lut[labels[changed]]), mapping

"""From network outputs to instance label images, boxes and per-instance tables."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .types import InstanceResult

# U-Net class indices of the nuclei models (background / nucleus interior / boundary).
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def smallest_label_dtype(max_label: int) -> np.dtype:
    """uint16 while ids fit, uint32 beyond 65,535 objects."""
    return np.dtype(np.uint16) if max_label <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def instances_from_classes(
    classes: np.ndarray,
    min_size: int = 8,
    grow_iterations: int = 4,
    interior_class: int = INTERIOR,
    boundary_class: int = BOUNDARY,
    seed_probability: np.ndarray | None = None,
    seed_threshold: float = 0.5,
) -> np.ndarray:
    """Instance labels from a background/interior/boundary class map.

    Seeds are connected regions of confident interior: where the interior
    probability (uint8, x 255) reaches ``seed_threshold`` when it is given,
    else the interior class. The predicted boundary separates touching
    nuclei; each seed then grows back into the rest of the foreground
    (interior or boundary), a few pixels at a time, without crossing into
    another instance. Objects smaller than ``min_size`` pixels are dropped.
    Returns int32 labels numbered 1..N.
    """
    foreground = (classes == interior_class) | (classes == boundary_class)
    if seed_probability is not None:
        seeds_mask = seed_probability >= round(seed_threshold * 255)
    else:
        seeds_mask = classes == interior_class
    seeds, _ = ndimage.label(seeds_mask & foreground)
    del seeds_mask
    for _ in range(grow_iterations):
        grown = ndimage.grey_dilation(seeds, size=(3, 3))
        free = (seeds == 0) & foreground
        seeds[free] = grown[free]
        del grown, free
    if min_size > 1:
        sizes = np.bincount(seeds.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            seeds[small[seeds]] = 0
    return relabel_sequential(seeds)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the ids present to 1..N (keeping 0 and the ids' order), as int32."""
    counts = np.bincount(labels.ravel())
    present = np.flatnonzero(counts)
    present = present[present > 0]
    lut = np.zeros(len(counts), dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lut[labels]


def boxes_from_labels(labels: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """(N, 4) boxes ``y_min, x_min, y_max, x_max`` (max exclusive) of 2D labels."""
    boxes = np.zeros((len(label_ids), 4), dtype=np.int64)
    if len(label_ids) == 0:
        return boxes
    slices = ndimage.find_objects(labels, max_label=int(label_ids.max()))
    for row, label_id in enumerate(label_ids):
        sl = slices[int(label_id) - 1]
        if sl is not None:
            boxes[row] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    return boxes


def instance_result_from_labels(
    labels: np.ndarray,
    class_names: list[str],
    scores: np.ndarray | None = None,
    class_ids: np.ndarray | None = None,
) -> InstanceResult:
    """Wrap 2D labels numbered 1..N (N = labels.max()) as an InstanceResult."""
    n = int(labels.max()) if labels.size else 0
    label_ids = np.arange(1, n + 1, dtype=np.int64)
    final = labels.astype(smallest_label_dtype(n), copy=False)
    return InstanceResult(
        labels=final,
        label_ids=label_ids,
        boxes=boxes_from_labels(final, label_ids),
        scores=np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32),
        class_ids=np.ones(n, np.int64) if class_ids is None else np.asarray(class_ids, np.int64),
        class_names=list(class_names),
    )

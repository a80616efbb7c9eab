"""From network outputs to instance label images, boxes and per-instance tables."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..types import InstanceResult

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
    np.logical_and(seeds_mask, foreground, out=seeds_mask)
    seeds, _ = ndimage.label(seeds_mask)
    del seeds_mask
    for _ in range(grow_iterations):
        _grow_once(seeds, foreground)
    if min_size > 1:
        small = small_ids(seeds, min_size)
        if small.any():
            seeds[small[seeds]] = 0
    return _relabelled_in_place(seeds)


def _grow_once(seeds: np.ndarray, foreground: np.ndarray, band_rows: int = 256) -> None:
    """One step of growth in place: each free foreground pixel takes the
    largest id among its 3x3 neighbours, as ``grey_dilation(seeds, (3, 3))``
    of the whole image would give it, band by band so that no second
    full-size int32 image is held (256 MiB at 8192 x 8192, the U-Net's peak).
    Each band is dilated with the original row above it (saved before that
    row's band was updated) and the not yet updated row below."""
    height = seeds.shape[0]
    above = None  # the row above the band as it was before this step
    for y0 in range(0, height, band_rows):
        y1 = min(height, y0 + band_rows)
        lo, hi = max(0, y0 - 1), min(height, y1 + 1)
        window = seeds[lo:hi].copy()
        if above is not None:
            window[0] = above
        grown = ndimage.grey_dilation(window, size=(3, 3))[y0 - lo : y0 - lo + y1 - y0]
        band = seeds[y0:y1]
        above = band[-1].copy()
        free = (band == 0) & foreground[y0:y1]
        band[free] = grown[free]


def _relabelled_in_place(labels: np.ndarray, band_pixels: int = 2**22) -> np.ndarray:
    """``relabel_sequential`` of int32 ``labels``, written into ``labels``
    itself band by band (no second full-size image: 268 MB at 8192 x 8192)."""
    if labels.dtype != np.int32 or labels.ndim != 2:
        return relabel_sequential(labels)
    lut = _sequential_lut(labels)
    rows = max(1, band_pixels // max(1, labels.shape[1]))
    for start in range(0, labels.shape[0], rows):
        band = labels[start : start + rows]
        np.take(lut, band, out=band)
    return labels


def small_ids(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Per id (the index), whether its object has fewer than ``min_size``
    pixels; never the background (0). ``small_ids(labels, n)[labels]`` marks
    the pixels of small objects."""
    small = id_counts(labels) < min_size
    small[0] = False
    return small


def id_counts(
    labels: np.ndarray, weights: np.ndarray | None = None, band_pixels: int = 2**22
) -> np.ndarray:
    """Pixels per id (the index; ids 0..max), as ``np.bincount(labels.ravel())``
    gives them, or the sums of ``weights`` (an image of the same shape) per id,
    band by band: bincount casts int32 ids to int64 (and weights to float64)
    first, a 512 MiB copy of an 8192 x 8192 image (the U-Net's peak memory)."""
    flat = labels.reshape(-1)  # a view of a contiguous image
    values = None if weights is None else weights.reshape(-1)
    length = int(flat.max()) + 1 if flat.size else 1
    counts = np.zeros(length, np.int64 if weights is None else np.float64)
    for start in range(0, flat.size, band_pixels):
        band = slice(start, start + band_pixels)
        counts += np.bincount(
            flat[band], weights=None if values is None else values[band], minlength=length
        )
    return counts


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the ids present to 1..N (keeping 0 and the ids' order), as int32."""
    return _sequential_lut(labels)[labels]


def _sequential_lut(labels: np.ndarray) -> np.ndarray:
    """id -> its number among the ids present (0 stays 0), as int32."""
    counts = id_counts(labels)
    present = np.flatnonzero(counts)
    present = present[present > 0]
    lut = np.zeros(len(counts), dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lut


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
    boxes: np.ndarray | None = None,
) -> InstanceResult:
    """Wrap 2D labels numbered 1..N (N = labels.max()) as an InstanceResult
    (``boxes``, when known, spare reading the labels for them)."""
    n = int(labels.max()) if labels.size else 0
    label_ids = np.arange(1, n + 1, dtype=np.int64)
    final = labels.astype(smallest_label_dtype(n), copy=False)
    return InstanceResult(
        labels=final,
        label_ids=label_ids,
        boxes=boxes_from_labels(final, label_ids) if boxes is None else boxes,
        scores=np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32),
        class_ids=np.ones(n, np.int64) if class_ids is None else np.asarray(class_ids, np.int64),
        class_names=list(class_names),
    )


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if labels.shape == shape:
        return labels
    from skimage.transform import resize

    return resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(
        labels.dtype
    )


def resize_instances(result: InstanceResult, shape: tuple[int, int]) -> InstanceResult:
    """Labels resized back to ``shape``; objects lost in resizing (slivers)
    drop out of the per-object arrays too."""
    labels = resize_labels(result.labels, shape)
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=len(result) + 1))
    present = present[present > 0]
    rows = present - 1  # ids are 1..N in row order
    return instance_result_from_labels(
        relabel_sequential(labels),
        result.class_names,
        result.scores[rows],
        result.class_ids[rows],
    )


def stack_instances(
    results: list[InstanceResult], stack_shape, spatial, class_names
) -> InstanceResult:
    """Combine per-slice results into one stack result; ids stay unique across
    slices. Consumes ``results``: each slice is let go once copied, so a long
    stack is not held twice."""
    if not stack_shape:
        return results[0]
    total = sum(len(r) for r in results)
    dtype = smallest_label_dtype(total)
    labels = np.zeros((len(results), *spatial), dtype)
    offset = 0
    label_ids, boxes, scores, class_ids, stack_index = [], [], [], [], []
    for i in range(len(results)):
        r, results[i] = results[i], None
        slice_labels = r.labels.astype(dtype)
        slice_labels[slice_labels > 0] += dtype.type(offset)
        labels[i] = slice_labels
        label_ids.append(r.label_ids + offset)
        boxes.append(r.boxes)
        scores.append(r.scores)
        class_ids.append(r.class_ids)
        stack_index.append(np.full(len(r), i, np.int64))
        offset += len(r)
    return InstanceResult(
        labels=labels.reshape(*stack_shape, *spatial),
        label_ids=np.concatenate(label_ids),
        boxes=np.concatenate(boxes).reshape(-1, 4),
        scores=np.concatenate(scores),
        class_ids=np.concatenate(class_ids),
        class_names=class_names,
        stack_index=np.concatenate(stack_index),
    )

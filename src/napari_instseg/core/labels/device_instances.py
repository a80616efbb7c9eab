"""The U-Net's instance post-processing as torch operations on the model's
device, for a GPU.

The same rules as ``postprocess.instances_from_classes`` (seeds are
4-connected regions of confident interior, grown into the foreground one
8-connected step at a time, small objects dropped, ids numbered in the raster
order of each object's first pixel) and the same labels, pixel for pixel.
On a CPU scipy is faster; on a GPU this keeps the class map on the device,
where the seeded growth and labelling of a 3072 x 3072 field take
milliseconds instead of the second scipy needs.
"""

from __future__ import annotations

import numpy as np
import torch

from .postprocess import BOUNDARY, INTERIOR

# Labelling holds about 40 bytes per pixel on the device (edges and trees in
# int64): up to 64 Mpx (about 2.5 GB) a slice is post-processed there.
MAX_DEVICE_PIXELS = 64 * 2**20


def fits_on(device: torch.device, pixels: int) -> bool:
    """Whether a slice of ``pixels`` is post-processed on ``device`` (a GPU)
    rather than by scipy on the host."""
    return device.type == "cuda" and pixels <= MAX_DEVICE_PIXELS


def _max_3x3(x: torch.Tensor) -> torch.Tensor:
    """The maximum over each pixel's 3 x 3 neighbourhood of non-negative
    values (outside the image counts as 0, which never wins)."""
    h, w = x.shape
    padded = x.new_zeros((h + 2, w + 2))
    padded[1:-1, 1:-1] = x
    rows = torch.maximum(torch.maximum(padded[:-2], padded[1:-1]), padded[2:])
    return torch.maximum(torch.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def label_components(mask: torch.Tensor) -> torch.Tensor:
    """4-connected components of a (H, W) bool mask as int64 labels 1..N,
    numbered in the raster order of each component's first pixel (as
    ``scipy.ndimage.label`` numbers them); 0 outside the mask.

    Union-find in whole-array steps (hook and compress): every pixel starts
    as its own tree; each round compresses all paths to their roots, then
    hooks the larger root of every edge between two trees onto the smaller
    (``scatter_reduce`` with ``amin``), and keeps only the edges still
    between trees. Roots only ever point to smaller indices, so each
    component ends rooted at its first pixel, in a few rounds however long
    or winding it is.
    """
    h, w = mask.shape
    parent = torch.arange(h * w, device=mask.device, dtype=torch.int64)
    index = parent.view(h, w)
    across = mask[:, :-1] & mask[:, 1:]
    down = mask[:-1] & mask[1:]
    first = torch.cat([index[:, :-1][across], index[:-1][down]])
    second = torch.cat([index[:, 1:][across], index[1:][down]])
    while first.numel():
        while True:  # compress: every pixel points at its root
            grand = parent[parent]
            if torch.equal(grand, parent):
                break
            parent = grand
        root_a, root_b = parent[first], parent[second]
        apart = root_a != root_b
        first, second = first[apart], second[apart]
        root_a, root_b = root_a[apart], root_b[apart]
        parent.scatter_reduce_(
            0, torch.maximum(root_a, root_b), torch.minimum(root_a, root_b), reduce="amin"
        )
    return _numbered(parent.view(h, w), mask)


def _numbered(roots: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels 1..N for the distinct root indices inside ``mask``, in their order."""
    labels = torch.zeros_like(roots)
    if bool(mask.any()):
        _, order = torch.unique(roots[mask], sorted=True, return_inverse=True)
        labels[mask] = order + 1
    return labels


def relabel_sequential(labels: torch.Tensor) -> torch.Tensor:
    """The ids present renumbered 1..N in their order (0 stays 0), as int32."""
    counts = torch.bincount(labels.view(-1))
    present = counts > 0
    present[0] = False
    lookup = torch.cumsum(present, 0) * present
    return lookup[labels].to(torch.int32)


def instances_from_classes(
    classes: torch.Tensor,
    min_size: int = 8,
    grow_iterations: int = 4,
    interior_class: int = INTERIOR,
    boundary_class: int = BOUNDARY,
    seed_probability: torch.Tensor | None = None,
    seed_threshold: float = 0.5,
) -> torch.Tensor:
    """``postprocess.instances_from_classes`` on tensors: int32 labels 1..N on
    the tensors' device."""
    foreground = classes == interior_class
    if boundary_class >= 0:  # -1: the model has none (and would wrap round in uint8)
        foreground |= classes == boundary_class
    if seed_probability is not None:
        seeds_mask = seed_probability >= round(seed_threshold * 255)
    else:
        seeds_mask = classes == interior_class
    seeds = label_components(seeds_mask & foreground)
    for _ in range(grow_iterations):
        free = (seeds == 0) & foreground
        seeds = torch.where(free, _max_3x3(seeds), seeds)
    if min_size > 1:
        small = torch.bincount(seeds.view(-1)) < min_size
        small[0] = False
        seeds = torch.where(small[seeds], 0, seeds)
    return relabel_sequential(seeds)


def object_statistics(
    labels: torch.Tensor, probability: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(boxes y_min, x_min, y_max, x_max with the max exclusive; areas; mean
    ``probability`` / 255, or None without one) of labels 1..N, computed on
    their device."""
    n = int(labels.max()) if labels.numel() else 0
    if n == 0:
        means = None if probability is None else np.zeros(0, np.float64)
        return np.zeros((0, 4), np.int64), np.zeros(0, np.int64), means
    h, w = labels.shape
    flat = labels.view(-1).long()
    inside = flat > 0
    ids = flat[inside]
    positions = torch.nonzero(inside).squeeze(1)
    ys, xs = positions // w, positions % w
    boxes = torch.empty((4, n + 1), dtype=torch.int64, device=labels.device)
    for row, (values, reduce, start) in enumerate(
        [(ys, "amin", h), (xs, "amin", w), (ys + 1, "amax", 0), (xs + 1, "amax", 0)]
    ):
        boxes[row].fill_(start)
        boxes[row].scatter_reduce_(0, ids, values, reduce=reduce)
    areas = torch.bincount(ids, minlength=n + 1)
    means = None
    if probability is not None:
        sums = torch.bincount(ids, weights=probability.view(-1)[inside].double(), minlength=n + 1)
        means = (sums / areas.clamp(min=1).double() / 255.0)[1:].cpu().numpy()
    return boxes[:, 1:].T.cpu().numpy(), areas[1:].cpu().numpy(), means

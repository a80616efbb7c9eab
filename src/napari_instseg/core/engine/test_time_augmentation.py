"""Test-time augmentation: the network run on the 8 flips and 90 degree
rotations of each tile, its outputs mapped back and averaged.

Class probabilities are averaged pixel by pixel. Detections are mapped back
(boxes and their 28x28 masks), grouped across the 8 views by box overlap
(at most one per view) and fused: score-weighted mean box and mask, and a
score that is the sum over views divided by 8, so an object seen in only
some views scores lower (as in weighted box fusion).
"""

from __future__ import annotations

import numpy as np
import torch

VIEWS = [(k, flip) for flip in (False, True) for k in range(4)]  # (quarter turns, mirrored)
FUSE_IOU = 0.55


def _view(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def _unview(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def augmented_probabilities(loaded, batch: torch.Tensor) -> torch.Tensor:
    """Class probabilities of a batch, averaged over the 8 views."""
    total = None
    for k, flip in VIEWS:
        probs = _unview(loaded.predict_tiles(_view(batch, k, flip)).float(), k, flip)
        total = probs if total is None else total + probs
    return total / len(VIEWS)


def _boxes_back(boxes: np.ndarray, k: int, flip: bool, height: int, width: int) -> np.ndarray:
    """(x0, y0, x1, y1) boxes of a view mapped back to the tile's frame."""
    x0, y0, x1, y1 = boxes.T
    # the view's frame after k quarter turns (counter-clockwise, as torch.rot90)
    h, w = (width, height) if k % 2 else (height, width)
    for _ in range(k % 4):  # undo one quarter turn: (x, y) -> (h - y, x) in the older frame
        x0, y0, x1, y1 = h - y1, x0, h - y0, x1
        h, w = w, h
    if flip:
        x0, x1 = width - x1, width - x0
    return np.stack([x0, y0, x1, y1], axis=1)


def _reversed_axes(k: int, flip: bool) -> tuple[bool, bool]:
    """Whether a view runs the tile's y and x axes backwards."""
    rotated_y, rotated_x = {0: (False, False), 1: (False, True), 2: (True, True), 3: (True, False)}[
        k % 4
    ]
    return rotated_y, rotated_x != flip


def _masks_back(masks: np.ndarray, boxes: np.ndarray, k: int, flip: bool):
    """Box-frame masks (N, 28, 28) of a view turned back like their (mapped
    back) ``boxes``, and the (N, 2) offset in mask cells at which to read them.

    The heads learnt masks sampled with ``roi_align(aligned=False)``, which
    reads pixel j at coordinate j: a mask's edges sit half a pixel before its
    box's, in the direction its axis runs. Along an axis that the view ran
    backwards that is half a pixel the other way once mapped back, so the mask
    is to be read one pixel further on to agree with the other views. The
    offset is applied when the masks are resampled for fusing (``_fuse``), so
    each mask is interpolated once.
    """
    masks = np.rot90(masks, -k, axes=(1, 2))
    masks = np.ascontiguousarray(masks[:, :, ::-1] if flip else masks)
    reverse_y, reverse_x = _reversed_axes(k, flip)
    cells = masks.shape[-1]
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    widths = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-3)
    offsets = np.zeros((len(masks), 2), np.float64)
    offsets[:, 0] = cells / heights if reverse_y else 0.0
    offsets[:, 1] = cells / widths if reverse_x else 0.0
    return masks, offsets


def augmented_detections(loaded, batch, sizes, score_threshold: float) -> list[dict]:
    """Detections of a batch, fused over the 8 views (dicts as torchvision's)."""
    views = []
    for k, flip in VIEWS:
        viewed = _view(batch, k, flip)
        view_sizes = [(w, h) if k % 2 else (h, w) for h, w in sizes]
        # a view may find an object below the threshold that its fusion lifts
        views.append(loaded.predict_tiles(viewed, view_sizes, score_threshold / 2))
    fused = []
    for i, (height, width) in enumerate(sizes):
        parts = []
        for v, (k, flip) in enumerate(VIEWS):
            det = views[v][i]
            boxes = det["boxes"].float().cpu().numpy()
            masks = det["masks"].float().cpu().numpy()[:, 0]
            back = _boxes_back(boxes, k, flip, height, width)
            turned, offsets = _masks_back(masks, back, k, flip)
            parts.append(
                (
                    back,
                    det["scores"].float().cpu().numpy(),
                    det["labels"].cpu().numpy(),
                    turned,
                    offsets,
                    np.full(len(boxes), v),
                )
            )
        fused.append(_fuse(*(np.concatenate(p) for p in zip(*parts))))
    return fused


def _mask_in_box(
    mask: np.ndarray, box: np.ndarray, target: np.ndarray, offset=(0.0, 0.0)
) -> np.ndarray:
    """A box-frame mask resampled into the frame of another box, so masks of
    slightly different boxes are averaged where they lie in the image; read
    ``offset`` (y, x) cells further on, at most to its last cell (its edge
    value carries on, as for a mask moved by that much)."""
    from scipy import ndimage

    cells = mask.shape[0]
    centres = (np.arange(cells) + 0.5) / cells
    # image coordinates of the target's cell centres, in the source mask's cells
    ys = (target[1] + centres * (target[3] - target[1]) - box[1]) / max(box[3] - box[1], 1e-3)
    xs = (target[0] + centres * (target[2] - target[0]) - box[0]) / max(box[2] - box[0], 1e-3)
    ys, xs = ys * cells - 0.5, xs * cells - 0.5
    ys = np.where(ys <= cells - 1, np.minimum(ys + offset[0], cells - 1), ys)
    xs = np.where(xs <= cells - 1, np.minimum(xs + offset[1], cells - 1), xs)
    grid = np.meshgrid(ys, xs, indexing="ij")
    return ndimage.map_coordinates(mask, grid, order=1, mode="constant", cval=0.0)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-6)


def _fuse(boxes, scores, labels, masks, offsets, view) -> dict:
    """Greedy grouping by score: each group takes the best detection and, from
    every other view, its best-overlapping detection of the same class."""
    order = np.argsort(-scores, kind="stable")
    free = np.ones(len(scores), bool)
    out_boxes, out_scores, out_labels, out_masks = [], [], [], []
    for first in order:
        if not free[first]:
            continue
        candidates = np.flatnonzero(free & (labels == labels[first]))
        overlap = _iou(boxes[first], boxes[candidates])
        group = [first]
        for v in np.unique(view[candidates]):
            if v == view[first]:
                continue
            of_view = (view[candidates] == v) & (overlap >= FUSE_IOU)
            if of_view.any():
                group.append(candidates[of_view][np.argmax(overlap[of_view])])
        free[group] = False
        weights = scores[group] / scores[group].sum()
        fused_box = weights @ boxes[group]
        out_boxes.append(fused_box)
        resampled = [_mask_in_box(masks[g], boxes[g], fused_box, offsets[g]) for g in group]
        out_masks.append(np.tensordot(weights, np.stack(resampled), axes=1))
        out_scores.append(scores[group].sum() / len(VIEWS))
        out_labels.append(labels[first])
    n = len(out_scores)
    return {
        "boxes": torch.from_numpy(np.array(out_boxes, np.float32).reshape(n, 4)),
        "scores": torch.from_numpy(np.array(out_scores, np.float32)),
        "labels": torch.from_numpy(np.array(out_labels, np.int64)),
        "masks": torch.from_numpy(np.array(out_masks, np.float32).reshape(n, 1, 28, 28)),
    }

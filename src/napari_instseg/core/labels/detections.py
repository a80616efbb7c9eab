"""Detections before and after painting: Mask R-CNN's boxes, scores,
classes and 28x28 mask probabilities of one slice (``Detections``), and how
they become a label image (``paste`` each mask into its box, higher scores
winning overlaps)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..types import InstanceResult
from .device_instances import fits_on
from .device_painting import paint_on_device
from .postprocess import instance_result_from_labels, relabel_sequential


def paste(
    labels: np.ndarray, mask: np.ndarray, box: np.ndarray, label_id: int, threshold: float = 0.5
) -> int:
    """Paint a heads-resolution mask resampled into its box (y_min, x_min,
    y_max, x_max, fractional) where it is at least ``threshold``; returns
    pixels painted.

    Each pixel is sampled at its exact place in the (fractional) box, where
    the training targets put it: torchvision cuts them from the annotation with
    ``roi_align(aligned=False)``, which reads pixel j at coordinate j (not at
    its centre j + 0.5). Stretching the mask over the box rounded out to whole
    pixels instead shifted and grew small nuclei by up to a pixel a side, which
    cost 0.048 AP75 on the gray val images.
    """
    height, width = labels.shape
    by0, bx0, by1, bx1 = (float(v) for v in box)
    y0, x0 = max(0, int(np.floor(by0))), max(0, int(np.floor(bx0)))
    y1, x1 = min(height, int(np.ceil(by1)) + 1), min(width, int(np.ceil(bx1)) + 1)
    if y1 <= y0 or x1 <= x0:
        return 0
    # pixel coordinates in grid_sample's [-1, 1] box coordinates (align_corners=False)
    ys = (torch.arange(y0, y1, dtype=torch.float32) - by0) / max(by1 - by0, 1e-3) * 2 - 1
    xs = (torch.arange(x0, x1, dtype=torch.float32) - bx0) / max(bx1 - bx0, 1e-3) * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    resampled = F.grid_sample(
        torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None, None],
        grid,
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    on = resampled >= threshold
    labels[y0:y1, x0:x1][on] = label_id
    return int(on.sum())


@dataclass(frozen=True)
class Detections:
    """One 2D slice's detections before they are painted: boxes in slice
    pixels (y_min, x_min, y_max, x_max, fractional, as in ``InstanceResult``;
    torchvision's x0, y0, x1, y1 stay inside the network code), scores,
    class ids and the heads' 28x28 mask
    probabilities, with the class names of the model that made them.
    Painting is cheap next to the network, so a mask threshold can be chosen
    by painting one set of detections several times."""

    shape: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray
    class_names: tuple[str, ...]

    def paint(self, mask_threshold: float = 0.5, device: torch.device | None = None):
        """The label image and per-instance arrays (see ``paint_instances``);
        on a CUDA ``device`` painted there, all masks of a size at once."""
        arrays = (self.shape, self.boxes, self.scores, self.classes, self.masks, self.class_names)
        if device is not None and fits_on(device, self.shape[0] * self.shape[1]):
            return paint_on_device(*arrays, device, mask_threshold)
        return paint_instances(*arrays, mask_threshold)


def paint_instances(
    shape, boxes, scores, classes, masks, class_names, mask_threshold=0.5, min_visible=0.5
) -> InstanceResult:
    """Label image from scored masks (on where at least ``mask_threshold``):
    higher scores win overlaps, and an instance left with less than
    ``min_visible`` of its mask is dropped."""
    order = np.argsort(-scores, kind="stable")
    labels = np.zeros(shape, np.int32)
    painted = np.zeros(len(order) + 1, np.int64)
    # paint lowest score first so higher scores overwrite; id = rank by score
    for rank in range(len(order) - 1, -1, -1):
        k = order[rank]
        painted[rank + 1] = paste(labels, masks[k], boxes[k], rank + 1, mask_threshold)
    visible = np.bincount(labels.ravel(), minlength=len(painted))
    drop = visible < np.maximum(1, min_visible * painted)
    drop[0] = False
    if drop.any():
        labels[drop[labels]] = 0
    labels = relabel_sequential(labels)
    kept = np.flatnonzero(~drop[1:])  # ranks of the kept instances, in id order
    return instance_result_from_labels(
        labels, list(class_names), scores=scores[order][kept], class_ids=classes[order][kept]
    )

"""Segmenting inside boxes a user drew: a box is a prompt.

``segment_in_boxes`` reads a window around each box (with context, and
normalised with the whole slice's percentiles, as the engine does), and

- for a Mask R-CNN, runs its second stage on the box itself
  (``maskrcnn.masks_in_boxes``): the box head refines the box and scores it,
  the mask head paints the object;
- for a U-Net, takes its class map of the window, derives instances as the
  engine does and keeps the one with most pixels in the box.

The object is clipped to the box the user drew: what lies outside is not
what they asked for. A box with nothing in it gives None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..devices import configure_cpu_threads
from ..labels.detections import paste
from ..labels.postprocess import instances_from_classes
from ..models.architectures import INSTANCE
from ..models.loading import load_model
from ..types import InputError
from . import options
from .reading import NormalisedSlice, SliceReader, check_dtype, resolve_axes, to_tensor

# a drawn box is an explicit request, so it takes far less evidence than a
# detection (options.SCORE_THRESHOLD); boxes on empty background score < 0.01
MIN_SCORE = 0.1
CONTEXT = 0.5  # the window reaches this much of the box's longer side beyond it
MIN_CONTEXT = 16  # pixels


@dataclass
class BoxSegment:
    """One object found in a box: its mask over a window of the slice."""

    mask: np.ndarray  # bool, the window's shape
    offset: tuple[int, int]  # (y, x) of the window in the slice
    box: tuple[int, int, int, int]  # y_min, x_min, y_max, x_max of the mask (max exclusive)
    score: float
    class_id: int
    class_name: str

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the object in slice coordinates."""
        ys, xs = np.nonzero(self.mask)
        return ys + self.offset[0], xs + self.offset[1]


def segment_in_boxes(
    image,
    model,
    boxes,
    *,
    device: str = "auto",
    channel_axis: int | None = None,
    mask_threshold: float | None = None,
    min_score: float = MIN_SCORE,
) -> list[BoxSegment | None]:
    """The object inside each ``(y_min, x_min, y_max, x_max)`` box of a 2D
    image (gray, RGB or multichannel), or None where a box holds none (or
    only an object scoring under ``min_score``)."""
    loaded = load_model(model, device)
    check_dtype(image)
    channel_axis, stack_shape = resolve_axes(image, channel_axis)
    if stack_shape:
        raise InputError(f"segment a box in one 2D slice, not a stack {stack_shape}")
    configure_cpu_threads()
    work = NormalisedSlice(SliceReader(image, (), channel_axis), loaded.info)
    height, width = work.shape
    found = []
    for box in np.asarray(boxes, float).reshape(-1, 4):
        y0, x0 = max(0.0, box[0]), max(0.0, box[1])
        y1, x1 = min(float(height), box[2]), min(float(width), box[3])
        if y1 - y0 < 2 or x1 - x0 < 2:
            found.append(None)
            continue
        margin = max(MIN_CONTEXT, CONTEXT * max(y1 - y0, x1 - x0))
        wy0, wx0 = int(max(0, np.floor(y0 - margin))), int(max(0, np.floor(x0 - margin)))
        wy1 = int(min(height, np.ceil(y1 + margin)))
        wx1 = int(min(width, np.ceil(x1 + margin)))
        window = work.window(slice(wy0, wy1), slice(wx0, wx1))
        local = np.array([y0 - wy0, x0 - wx0, y1 - wy0, x1 - wx0])
        if loaded.info.task == INSTANCE:
            segment = _mask_rcnn_object(loaded, window, local, mask_threshold)
        else:
            segment = _unet_object(loaded, window, local)
        if segment is None:
            found.append(None)
            continue
        mask, score, class_id = segment
        if score < min_score:
            found.append(None)
            continue
        inside = np.zeros_like(mask)
        inside[
            int(np.floor(local[0])) : int(np.ceil(local[2])),
            int(np.floor(local[1])) : int(np.ceil(local[3])),
        ] = True
        mask &= inside
        if not mask.any():
            found.append(None)
            continue
        ys, xs = np.nonzero(mask)
        found.append(
            BoxSegment(
                mask,
                (wy0, wx0),
                (
                    int(ys.min() + wy0),
                    int(xs.min() + wx0),
                    int(ys.max() + wy0 + 1),
                    int(xs.max() + wx0 + 1),
                ),
                float(score),
                int(class_id),
                loaded.info.class_names[int(class_id)],
            )
        )
    return found


def _mask_rcnn_object(loaded, window, local, mask_threshold):
    from ..models.maskrcnn import masks_in_boxes

    _, mask_threshold = options.detection_thresholds(0.0, mask_threshold, loaded.info.postprocess)
    x = to_tensor([window], loaded.device, 1)[0]
    xyxy = torch.tensor([[local[1], local[0], local[3], local[2]]], dtype=torch.float32)
    out = masks_in_boxes(loaded.predictor, x, xyxy.to(loaded.device))
    refined = out["boxes"][0].float().cpu().numpy()[[1, 0, 3, 2]]
    painted = np.zeros(window.shape[:2], np.int32)
    mask = out["masks"][0].float().cpu().numpy()
    if not paste(painted, mask, refined, 1, mask_threshold):
        return None
    return painted > 0, out["scores"][0].item(), out["labels"][0].item()


def _unet_object(loaded, window, local):
    rule = loaded.info.instance_rule()
    interior = rule.interior_class
    divisor = getattr(loaded.predictor, "size_divisor", 16)
    height, width = window.shape[:2]
    with torch.inference_mode():
        probs = loaded.predict_tiles(to_tensor([window], loaded.device, divisor))
    probs = probs[0, :, :height, :width].float().cpu().numpy()
    seed = np.round(probs[interior] * 255).astype(np.uint8)
    labels = instances_from_classes(
        probs.argmax(0), rule.min_size, seed_probability=seed, **rule.keywords()
    )
    y0, x0 = int(np.floor(local[0])), int(np.floor(local[1]))
    y1, x1 = int(np.ceil(local[2])), int(np.ceil(local[3]))
    counts = np.bincount(labels[y0:y1, x0:x1].ravel())
    counts[0] = 0
    if not counts.any():
        return None
    mask = labels == counts.argmax()
    return mask, float(probs[interior][mask].mean()), 1

"""Training batches: which images a batch's crops come from, and the targets
each architecture learns from (class maps for U-Nets, boxes and masks for
Mask R-CNN). Batches depend on (seed, iteration) alone, so a run is the same
with any number of data workers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data import (
    IGNORE_INDEX,
    AnnotatedImage,
    augmented_crop,
    touching_zone,
    unet_targets,
    without_ignored,
)
from .training_config import TrainConfig


def sample_indices(samples: Sequence[AnnotatedImage], config: TrainConfig, rng) -> np.ndarray:
    """Which images the batch's crops come from.

    ``area`` draws an image with probability proportional to the square root
    of its area, so a 1024 x 1024 field (16 crops' worth of pixels) is drawn 4x
    as often as a 256 x 256 one instead of as rarely. ``balanced`` does that
    within each kind of image (``AnnotatedImage.kind``) and gives each kind a
    share proportional to the square root of its area weight: a rare kind
    (13 gray brightfield images among 533 in DSB2018: 7% of area-weighted
    draws, 18% balanced) is seen more often, the common kind still most.
    """
    if config.sample_weighting == "uniform":
        return rng.integers(0, len(samples), config.batch_size)
    weights = np.sqrt(np.array([s.labels.size for s in samples], float))
    if config.sample_weighting == "balanced":
        kinds = np.array([s.kind for s in samples])
        for kind in np.unique(kinds):
            of_kind = kinds == kind
            total = weights[of_kind].sum()
            weights[of_kind] *= np.sqrt(total) / total
    elif config.sample_weighting != "area":
        raise ValueError(f"unknown sample weighting {config.sample_weighting!r}")
    return rng.choice(len(samples), config.batch_size, p=weights / weights.sum())


def unet_batch(
    samples: Sequence[AnnotatedImage],
    config: TrainConfig,
    rng: np.random.Generator,
    semantic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Crops and targets: boundary-aware classes from instance labels, or the
    class maps themselves (``semantic``). With ``config.touching_weight``
    other than 1 the targets are (classes, per-pixel loss weights)."""
    weighted = config.touching_weight != 1.0 and not semantic
    images, targets, weights = [], [], []
    for index in sample_indices(samples, config, rng):
        sample = samples[int(index)]
        image, labels = augmented_crop(sample, config.augment, rng)
        images.append(image)
        if semantic:
            target = labels.astype(np.uint8)
            if sample.ignore_value is not None:
                target[labels == sample.ignore_value] = IGNORE_INDEX
        else:
            target = unet_targets(labels, sample.ignore_value)
            if weighted:
                zone = touching_zone(without_ignored(labels, sample.ignore_value))
                weights.append(np.where(zone, config.touching_weight, 1.0).astype(np.float32))
        targets.append(target)
    classes = torch.from_numpy(np.stack(targets)).long()
    if weighted:
        return torch.from_numpy(np.stack(images)), (classes, torch.from_numpy(np.stack(weights)))
    return torch.from_numpy(np.stack(images)), classes


def detection_target(
    labels: np.ndarray, min_area: int = 4, instance_classes: dict[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """torchvision detection target (boxes x1,y1,x2,y2, labels, masks) of a crop;
    slivers cut by the crop edge (< ``min_area`` px or < 2 px wide) are dropped.
    ``instance_classes`` gives each instance's class index (default 1)."""
    from scipy import ndimage

    ids = np.flatnonzero(np.bincount(labels.ravel()) >= min_area)
    ids = ids[ids > 0]
    boxes, keep = [], []
    slices = ndimage.find_objects(labels)
    for label_id in ids:
        sl = slices[label_id - 1]
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        if y1 - y0 >= 2 and x1 - x0 >= 2:
            boxes.append([x0, y0, x1, y1])
            keep.append(label_id)
    keep = np.asarray(keep, dtype=labels.dtype)
    masks = labels[None] == keep[:, None, None]
    classes = [(instance_classes or {}).get(int(i), 1) for i in keep]
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(classes, dtype=torch.int64),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }


def maskrcnn_batch(samples, config: TrainConfig, rng: np.random.Generator):
    images, targets = [], []
    for index in sample_indices(samples, config, rng):
        sample = samples[int(index)]
        image, labels = augmented_crop(sample, config.augment, rng)
        labels = without_ignored(labels, sample.ignore_value)
        images.append(torch.from_numpy(image))
        targets.append(detection_target(labels, instance_classes=sample.instance_classes))
    return images, targets

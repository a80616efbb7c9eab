"""Training batches: which images a batch's crops come from, and the targets
each architecture learns from (class maps for U-Nets, boxes and masks for
Mask R-CNN). Batches depend on (seed, iteration) alone, so a run is the same
with any number of data workers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .augmentation import augmented_crop
from .config import TrainConfig
from .samples import IGNORE_INDEX, AnnotatedImage, touching_zone, unet_targets, without_ignored


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


def compact_target(
    labels: np.ndarray, min_area: int = 4, instance_classes: dict[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """A crop's detection target in compact form: boxes (x1, y1, x2, y2) and
    classes, and its label image with the ids of the kept objects in place of
    one mask each (``unpacked_targets`` makes torchvision's masks). Slivers cut
    by the crop edge (< ``min_area`` px or < 2 px wide) are dropped;
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
    classes = [(instance_classes or {}).get(int(i), 1) for i in keep]
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(classes, dtype=torch.int64),
        "instance_labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int32)),
        "mask_ids": torch.tensor(keep, dtype=torch.int32),
    }


def packed_targets(targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Compact targets of equal-sized crops in five tensors, as a batch travels
    from a data worker to the training loop (``unpacked_targets`` undoes it).

    Why: the loop receives each tensor of a batch separately (a shared-memory
    handle, about 0.6 ms each here), and one full-size mask per object is 3x
    the bytes of the images (16 crops of 384 px hold 36 objects each on
    average). Packed, a batch is 6 tensors instead of 64 and a third of the
    bytes (``benchmarks/training_batches.py``).
    """
    return {
        "instance_labels": torch.stack([t["instance_labels"] for t in targets]),
        "boxes": torch.cat([t["boxes"] for t in targets]),
        "labels": torch.cat([t["labels"] for t in targets]),
        "mask_ids": torch.cat([t["mask_ids"] for t in targets]),
        "counts": torch.tensor([len(t["mask_ids"]) for t in targets], dtype=torch.int64),
    }


def unpacked_targets(packed: dict[str, torch.Tensor], device=None) -> list[dict[str, torch.Tensor]]:
    """torchvision's per-image targets on ``device``, each object's (H, W) uint8
    mask made there from its crop's label image."""
    counts = packed["counts"].tolist()
    moved = {k: v.to(device) for k, v in packed.items() if k != "counts"}
    split = {k: torch.split(moved[k], counts) for k in ("boxes", "labels", "mask_ids")}
    return [
        {
            "boxes": split["boxes"][i],
            "labels": split["labels"][i],
            "masks": (moved["instance_labels"][i][None] == split["mask_ids"][i][:, None, None]).to(
                torch.uint8
            ),
        }
        for i in range(len(counts))
    ]


def maskrcnn_batch(samples, config: TrainConfig, rng: np.random.Generator):
    """(B, C, S, S) crops and their detection targets, packed (``packed_targets``)."""
    images, targets = [], []
    for index in sample_indices(samples, config, rng):
        sample = samples[int(index)]
        image, labels = augmented_crop(sample, config.augment, rng)
        labels = without_ignored(labels, sample.ignore_value)
        images.append(image)
        targets.append(compact_target(labels, instance_classes=sample.instance_classes))
    return torch.from_numpy(np.stack(images)), packed_targets(targets)

"""Each architecture's training recipe: its loss, its batches and what it
trains on, as ``Trainer`` subclasses; ``trainer_class`` picks one for an
architecture record, so the models package needs to know nothing of training."""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from ..models.architectures import Architecture
from .batches import maskrcnn_batch, unet_batch, unpacked_targets
from .loop import Trainer
from .samples import IGNORE_INDEX


class UNetTrainer(Trainer):
    """Cross-entropy on background / interior / boundary targets from instance masks."""

    channels_last = True
    cpu_bfloat16_allowed = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.loaded.info.class_names)
        weights = list(self.config.class_weights)[:n] + [1.0] * max(
            0, n - len(self.config.class_weights)
        )
        if self.semantic:
            weights = [1.0] * n
        self.class_weights = torch.tensor(weights, device=self.loaded.device)

    def batch_maker(self):
        return functools.partial(
            unet_batch, self.train_samples, self.config, semantic=self.semantic
        )

    def loss(self, inputs, targets):
        device = self.loaded.device
        logits = self.loaded.module(inputs.to(device).contiguous(memory_format=torch.channels_last))
        if not isinstance(targets, tuple):
            return F.cross_entropy(
                logits, targets.to(device), weight=self.class_weights, ignore_index=IGNORE_INDEX
            )
        classes, pixel_weights = (t.to(device) for t in targets)
        per_pixel = F.cross_entropy(
            logits, classes, weight=self.class_weights, ignore_index=IGNORE_INDEX, reduction="none"
        )
        # the weighted mean cross_entropy takes, with each pixel's weight on top
        counted = classes != IGNORE_INDEX
        class_weight = self.class_weights[torch.where(counted, classes, 0)]
        total = (class_weight * pixel_weights * counted).sum().clamp_min(1e-6)
        return (per_pixel.float() * pixel_weights).sum() / total


class SemanticUNetTrainer(UNetTrainer):
    """A U-Net trained on class maps (any number of classes), scored by mean IoU."""

    semantic = True


class MaskRCNNTrainer(Trainer):
    """torchvision's Mask R-CNN losses (RPN, box, class, mask) summed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        size = self.config.augment.crop_size
        # crops go in at native resolution during training, as at prediction time
        self.loaded.module.transform.min_size = (size,)
        self.loaded.module.transform.max_size = size

    def batch_maker(self):
        return functools.partial(maskrcnn_batch, self.train_samples, self.config)

    def loss(self, inputs, targets):
        device = self.loaded.device
        images = list(inputs.to(device).unbind(0))
        targets = unpacked_targets(targets, device)
        losses = self.loaded.module(images, targets)
        return sum(losses.values())


def trainer_class(record: Architecture, semantic: bool) -> type[Trainer]:
    """The training class for an architecture (``semantic``: on class maps)."""
    if record.name == "unet":
        return SemanticUNetTrainer if semantic else UNetTrainer
    if record.name == "maskrcnn":
        return MaskRCNNTrainer
    raise NotImplementedError(f"no training recipe for {record.title}")

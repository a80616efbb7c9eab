"""Validation scores of a model being trained, measured through the engine
exactly as users get predictions."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from ..labels.metrics import match_counts
from ..models.architectures import SEMANTIC
from ..models.loaded import LoadedModel
from .samples import AnnotatedImage


@contextlib.contextmanager
def evaluation_mode(module):
    """``module`` in eval mode for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def semantic_mean_iou(loaded: LoadedModel, samples: Sequence[AnnotatedImage]) -> float:
    """Mean IoU over the foreground classes, pixels summed over images."""
    from ..engine.predict import segment_semantic

    n = len(loaded.info.class_names)
    confusion = np.zeros((n, n), np.int64)
    for sample in samples:
        pred = segment_semantic(
            sample.image, loaded, channel_axis=sample.channel_axis, return_probabilities=False
        ).classes
        valid = sample.labels < n
        if sample.ignore_value is not None:
            valid &= sample.labels != sample.ignore_value
        pairs = sample.labels[valid].astype(np.int64) * n + pred[valid]
        confusion += np.bincount(pairs, minlength=n * n).reshape(n, n)
    inter = np.diag(confusion)[1:]
    union = (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))[1:]
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 0.0


def validate(
    loaded: LoadedModel,
    samples: Sequence[AnnotatedImage],
    thresholds=(0.5, 0.75),
    semantic: bool = False,
) -> dict:
    """Validation scores through the engine, exactly as users get predictions:
    AP at each threshold (counts summed over images), or for semantic models
    trained on class maps the mean IoU of the classes. ``score`` is the one
    that selects the best model."""
    if semantic:
        with evaluation_mode(loaded.module):
            miou = semantic_mean_iou(loaded, samples)
        return {"score": miou, "mean_iou": miou}
    from ..engine.predict import segment_instances, segment_semantic

    total = None
    with evaluation_mode(loaded.module):
        for sample in samples:
            if loaded.info.task == SEMANTIC:
                pred = segment_semantic(
                    sample.image,
                    loaded,
                    channel_axis=sample.channel_axis,
                    return_probabilities=False,
                )
                pred = pred.instances.labels
            else:
                pred = segment_instances(
                    sample.image, loaded, channel_axis=sample.channel_axis
                ).labels
            counts = match_counts(*sample.scoreable(pred), thresholds)
            total = counts if total is None else total + counts
    summary = total.summary()
    scores = {f"ap{int(round(t * 100))}": ap for t, ap in zip(thresholds, summary["ap"])}
    return {"score": summary["ap"][0], **scores}

"""Choosing a U-Net's post-processing (seed threshold, minimum object size)
on annotated images: predictions are made once, then the cheap instance
derivation is swept."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..labels.metrics import match_counts
from ..labels.postprocess import instances_from_classes
from ..models.loaded import LoadedModel
from .samples import AnnotatedImage

SEED_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
MIN_SIZES = (4, 8, 16, 24)


def sweep_postprocess(
    loaded: LoadedModel,
    samples: Sequence[AnnotatedImage],
    seed_thresholds=SEED_THRESHOLDS,
    min_sizes=MIN_SIZES,
) -> dict[tuple[float, int], list[float]]:
    """AP at IoU 0.5 and 0.75 (counts summed over ``samples``) for each
    (seed threshold, minimum size)."""
    from ..engine.predict import segment_semantic

    rule = loaded.info.instance_rule()
    interior, boundary = rule.interior_class, rule.boundary_class
    was_training = loaded.module.training
    loaded.module.eval()
    totals: dict = {}
    try:
        for sample in samples:
            result = segment_semantic(
                sample.image, loaded, channel_axis=sample.channel_axis, return_probabilities=True
            )
            probability = np.round(result.probabilities[interior] * 255).astype(np.uint8)
            for seed, min_size in itertools.product(seed_thresholds, min_sizes):
                labels = instances_from_classes(
                    result.classes,
                    min_size,
                    interior_class=interior,
                    boundary_class=boundary,
                    seed_probability=probability,
                    seed_threshold=seed,
                )
                counts = match_counts(*sample.scoreable(labels), [0.5, 0.75])
                key = (seed, min_size)
                totals[key] = counts if key not in totals else totals[key] + counts
    finally:
        loaded.module.train(was_training)
    return {key: counts.summary()["ap"] for key, counts in totals.items()}


def _highest_ap_sum(scores: dict) -> object:
    """The key whose AP50 + AP75 is highest: the one rule for choosing settings."""
    return max(scores, key=lambda key: sum(scores[key]))


def best_postprocess(scores: dict[tuple[float, int], list[float]]) -> dict:
    """The setting with the highest AP50 + AP75, as ``ModelInfo.postprocess`` keys."""
    seed, min_size = _highest_ap_sum(scores)
    return {"seed_threshold": seed, "min_size": min_size}


SCORE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MASK_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)


def sweep_detection_thresholds(
    loaded: LoadedModel,
    samples: Sequence[AnnotatedImage],
    thresholds=SCORE_THRESHOLDS,
    mask_thresholds=MASK_THRESHOLDS,
) -> dict[tuple[float, float], list[float]]:
    """AP at IoU 0.5 and 0.75 for each Mask R-CNN (score threshold, mask
    threshold). The network runs once per image, at the lowest score
    threshold; each mask threshold then paints those detections, and each
    score threshold drops the instances under it. Higher scores win overlaps
    when instances are painted, so dropping them afterwards gives exactly
    what predicting at that threshold would."""
    from ..engine.instance import detect_instances

    totals: dict = {}
    for sample in samples:
        detections = detect_instances(
            sample.image,
            loaded,
            channel_axis=sample.channel_axis,
            score_threshold=min(thresholds),
        )
        for mask_threshold in mask_thresholds:
            result = detections.paint(mask_threshold)
            for threshold in thresholds:
                kept = result.label_ids[result.scores >= threshold]
                labels = np.where(np.isin(result.labels, kept), result.labels, 0)
                counts = match_counts(*sample.scoreable(labels), [0.5, 0.75])
                key = (threshold, mask_threshold)
                totals[key] = counts if key not in totals else totals[key] + counts
    return {key: counts.summary()["ap"] for key, counts in totals.items()}


def best_detection_thresholds(scores: dict[tuple[float, float], list[float]]) -> dict:
    """The (score, mask) thresholds with the highest AP50 + AP75, as
    ``ModelInfo.postprocess`` keys."""
    score_threshold, mask_threshold = _highest_ap_sum(scores)
    return {"score_threshold": score_threshold, "mask_threshold": mask_threshold}

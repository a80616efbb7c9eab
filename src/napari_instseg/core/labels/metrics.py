"""Instance matching metrics (StarDist-style AP = TP / (TP + FP + FN)).

Overlaps come from one ``bincount`` over paired label values, so the cost is
linear in pixels, not in objects squared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())


def _relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:  # no background pixel: keep 0 free for background
        inverse = inverse + 1
        return inverse.reshape(labels.shape), len(ids)
    return inverse.reshape(labels.shape), len(ids) - 1


def overlap_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pixels shared by every true (rows) and predicted (columns) instance, in
    the order of their ids; row and column 0 are the background."""
    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {true.shape} vs {pred.shape}")
    t, n_true = _relabel_consecutive(np.asarray(true))
    p, n_pred = _relabel_consecutive(np.asarray(pred))
    pairs = t.ravel().astype(np.int64) * (n_pred + 1) + p.ravel()
    return np.bincount(pairs, minlength=(n_true + 1) * (n_pred + 1)).reshape(n_true + 1, n_pred + 1)


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU between every true (rows) and predicted (columns) instance, background excluded."""
    return iou_from_overlap(overlap_matrix(true, pred))


def iou_from_overlap(overlap: np.ndarray) -> np.ndarray:
    """``iou_matrix`` from an ``overlap_matrix``."""
    area_true = overlap.sum(axis=1, keepdims=True)
    area_pred = overlap.sum(axis=0, keepdims=True)
    union = area_true + area_pred - overlap
    iou = overlap / np.maximum(union, 1)
    return iou[1:, 1:]


@dataclass
class MatchCounts:
    """TP/FP/FN at each threshold plus summed IoU of matches (for mean IoU and PQ)."""

    thresholds: tuple[float, ...]
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    sum_iou: np.ndarray
    n_true: int = 0
    n_pred: int = 0

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(
            self.thresholds,
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.sum_iou + other.sum_iou,
            self.n_true + other.n_true,
            self.n_pred + other.n_pred,
        )

    def summary(self) -> dict:
        tp, fp, fn = (x.astype(float) for x in (self.tp, self.fp, self.fn))
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 1.0)
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 1.0)
            mean_iou = np.where(tp > 0, self.sum_iou / np.maximum(tp, 1), 0.0)
        return {
            "thresholds": list(self.thresholds),
            "ap": ap.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "mean_iou": mean_iou.tolist(),
            "panoptic_quality": (f1 * mean_iou).tolist(),
            "n_true": int(self.n_true),
            "n_pred": int(self.n_pred),
        }


def _assign(iou: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the one-to-one matches with IoU >= tau (max total IoU)."""
    if not iou.size:
        return np.zeros(0, int), np.zeros(0, int)
    # for tau >= 0.5 a match is unique anyway; the assignment keeps lower
    # thresholds one-to-one too
    eligible = np.where(iou >= tau, iou, 0.0)
    rows, cols = linear_sum_assignment(-eligible)
    keep = (eligible[rows, cols] >= tau) & (eligible[rows, cols] > 0)
    return rows[keep], cols[keep]


@dataclass
class InstanceMatch:
    """Which objects matched at one threshold (ids as in the label images)."""

    matched_true: np.ndarray
    matched_pred: np.ndarray
    false_negatives: np.ndarray  # true ids without a match
    false_positives: np.ndarray  # predicted ids without a match


def match_instances(true: np.ndarray, pred: np.ndarray, tau: float = 0.5) -> InstanceMatch:
    true_ids = np.unique(true)
    true_ids = true_ids[true_ids > 0]
    pred_ids = np.unique(pred)
    pred_ids = pred_ids[pred_ids > 0]
    rows, cols = _assign(iou_matrix(true, pred), tau)
    return InstanceMatch(
        true_ids[rows],
        pred_ids[cols],
        np.setdiff1d(true_ids, true_ids[rows]),
        np.setdiff1d(pred_ids, pred_ids[cols]),
    )


def match_counts(true: np.ndarray, pred: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> MatchCounts:
    """One-to-one matching maximising total IoU among pairs above each threshold."""
    iou = iou_matrix(true, pred)
    n_true, n_pred = iou.shape
    thresholds = tuple(float(t) for t in thresholds)
    tp = np.zeros(len(thresholds), np.int64)
    sum_iou = np.zeros(len(thresholds))
    for i, tau in enumerate(thresholds):
        rows, cols = _assign(iou, tau)
        tp[i] = len(rows)
        sum_iou[i] = iou[rows, cols].sum()
    return MatchCounts(
        thresholds,
        tp,
        n_pred - tp,
        n_true - tp,
        sum_iou,
        n_true,
        n_pred,
    )


@dataclass
class DatasetScore:
    """Counts summed over images plus each image's own summary."""

    total: MatchCounts
    per_image: dict[str, dict] = field(default_factory=dict)


def score_dataset(pairs, thresholds=DEFAULT_THRESHOLDS) -> DatasetScore:
    """``pairs`` yields (name, true_labels, pred_labels); counts are summed over images."""
    total = None
    per_image = {}
    for name, true, pred in pairs:
        counts = match_counts(true, pred, thresholds)
        per_image[name] = counts.summary()
        total = counts if total is None else total + counts
    if total is None:
        raise ValueError("no image pairs to score")
    return DatasetScore(total, per_image)

"""Matching metrics against an independent, definition-level implementation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_instseg.core.labels.metrics import iou_matrix, match_counts


def reference_ap(true, pred, tau):
    """Per-object loops straight from the definition (IoU > 0.5 matches are unique)."""
    tp = 0
    used = set()
    for t in np.unique(true)[1:]:
        tm = true == t
        for p in np.unique(pred)[1:]:
            if p in used:
                continue
            pm = pred == p
            iou = (tm & pm).sum() / (tm | pm).sum()
            if iou >= tau:
                tp += 1
                used.add(p)
                break
    n_true, n_pred = len(np.unique(true)) - 1, len(np.unique(pred)) - 1
    return tp / (n_true + n_pred - tp) if n_true + n_pred else 1.0


def random_labels(seed, shape=(48, 48), n=8):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        h, w = rng.integers(3, 9, 2)
        labels[y : y + h, x : x + w] = i
    return labels


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.sampled_from([0.5, 0.6, 0.75, 0.9]))
def test_ap_agrees_with_reference(seed_a, seed_b, tau):
    true, pred = random_labels(seed_a), random_labels(seed_b)
    pred = np.where(np.random.default_rng(seed_b).random(true.shape) < 0.7, true, pred)
    ap = match_counts(true, pred, [tau]).summary()["ap"][0]
    assert ap == pytest.approx(reference_ap(true, pred, tau))


def test_iou_matrix_of_identical_labels_is_identity():
    labels = random_labels(1)
    ids = np.unique(labels)[1:]
    iou = iou_matrix(labels, labels)
    np.testing.assert_allclose(iou, np.eye(len(ids)))


def test_empty_images_score_perfectly():
    empty = np.zeros((10, 10), np.int32)
    assert match_counts(empty, empty, [0.5]).summary()["ap"] == [1.0]


@pytest.mark.parametrize("key", ["nuclei", "nuclei-histology"])
def test_ap_agrees_with_reference_on_real_annotations(key):
    from scipy import ndimage

    from napari_instseg._sample_data import load_sample

    _, truth = load_sample(key, with_labels=True)
    truth = truth.astype(np.int32)
    rng = np.random.default_rng(1)
    # a plausible prediction: objects eroded or dilated, some missed, some shifted,
    # and a spurious one
    pred = np.zeros_like(truth)
    for label_id in np.unique(truth)[1:]:
        mask = truth == label_id
        choice = rng.integers(5)
        if choice == 0:
            continue
        if choice == 1:
            mask = ndimage.binary_erosion(mask, iterations=2)
        elif choice == 2:
            mask = ndimage.binary_dilation(mask, iterations=2)
        elif choice == 3:
            mask = np.roll(mask, 3, axis=1)
        pred[mask & (pred == 0)] = label_id + 1000
    pred[:6, :6] = 5000
    for tau in (0.5, 0.7, 0.9):
        ap = match_counts(truth, pred, [tau]).summary()["ap"][0]
        assert ap == pytest.approx(reference_ap(truth, pred, tau))

"""Choosing post-processing settings on annotated images."""

import dataclasses

import numpy as np
import torch

from conftest import disc_image
from napari_instseg import load_model
from napari_instseg.core.training.samples import AnnotatedImage
from napari_instseg.core.training.tuning import (
    best_detection_thresholds,
    sweep_detection_thresholds,
)

JUNK_BOX = [2.0, 2.0, 14.0, 14.0]  # an empty corner of every image


def _faint_oracle_detect(module, batch, sizes, score_threshold=0.0):
    """A detector whose masks are right but faint (0.45 inside the object),
    plus one confident-looking junk detection (score 0.35) per tile."""
    from scipy import ndimage

    detections = []
    for i, (h, w) in enumerate(sizes):
        comps, n = ndimage.label(batch[i, 0, :h, :w].numpy() > 0.5)
        boxes, masks = [JUNK_BOX], [torch.ones(1, 1, 28, 28)]
        for k, sl in enumerate(ndimage.find_objects(comps), start=1):
            crop = torch.from_numpy((comps[sl] == k).astype(np.float32))[None, None]
            masks.append(0.45 * torch.nn.functional.interpolate(crop, size=(28, 28)))
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        scores = torch.tensor([0.35] + [0.9] * n)
        keep = scores >= score_threshold
        detections.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32)[keep],
                "scores": scores[keep],
                "labels": torch.ones(int(keep.sum()), dtype=torch.int64),
                "masks": torch.cat(masks)[keep],
            }
        )
    return detections


def test_detection_thresholds_are_chosen_to_match_the_annotations(tiny_maskrcnn_path):
    model = dataclasses.replace(
        load_model(tiny_maskrcnn_path, "cpu"), tile_predictor=_faint_oracle_detect
    )
    samples = []
    for i, centres in enumerate([[(30, 30), (60, 64)], [(40, 70), (70, 30), (75, 75)]]):
        image, labels = disc_image((96, 96), centres, 8)
        samples.append(AnnotatedImage.create(f"s{i}", image, labels, {"low": 0.0, "high": 100.0}))
    scores = sweep_detection_thresholds(model, samples, (0.3, 0.5), (0.4, 0.5))
    assert set(scores) == {(0.3, 0.4), (0.3, 0.5), (0.5, 0.4), (0.5, 0.5)}
    # faint masks vanish at 0.5; at 0.3 the junk detection counts against AP
    assert scores[(0.5, 0.4)][0] == 1.0
    assert scores[(0.3, 0.4)][0] == 5 / 7
    assert scores[(0.5, 0.5)][0] == 0.0
    best = best_detection_thresholds(scores)
    assert best == {"score_threshold": 0.5, "mask_threshold": 0.4}

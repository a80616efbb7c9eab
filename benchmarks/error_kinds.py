"""Where a model's errors come from, per image kind: the model cards' failure modes.

    python benchmarks/error_kinds.py [--split val|test] [--models nuclei-unet ...]
        [--candidate CKPT ...] [--threads 2]

At IoU 0.5 (one-to-one matching, as ``accuracy_and_speed.py``), each missed
true nucleus is put in one class:

- ``merged``: most of it (>= 50% of its pixels) lies in one predicted object
  that also holds most of another true nucleus (touching nuclei made one);
- ``small``: under 40 px of area, and not merged (the minimum size and the
  receptive field lose these);
- ``other``: found partly, split in pieces, or not at all.

Each unmatched prediction is a false positive: ``split piece`` when it lies
mostly (>= 50%) inside one true nucleus that another prediction also covers,
else ``spurious`` (cytoplasm, debris, background). The test split is read only
to report a model being considered for bundling, never to tune anything.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, machine_description  # noqa: E402
from accuracy_and_speed import DEFAULT_DATA, _labels_function, candidate_name, load_images  # noqa: E402

from napari_instseg import load_model  # noqa: E402
from napari_instseg.core.labels.metrics import _assign, iou_from_overlap, overlap_matrix  # noqa: E402

SMALL_AREA = 40  # pixels
MISSED = ("merged", "small", "other")
FALSE = ("split piece", "spurious")


def error_counts(truth: np.ndarray, pred: np.ndarray) -> Counter:
    """Matched, missed (by class) and false (by class) objects of one image."""
    shared = overlap_matrix(truth, pred)  # row and column 0: background
    rows, cols = _assign(iou_from_overlap(shared), 0.5)
    overlap = shared[1:, 1:]  # pixels of true nucleus i inside predicted object j
    true_area, pred_area = shared.sum(1)[1:], shared.sum(0)[1:]
    n_true, n_pred = overlap.shape
    counts = Counter(matched=len(rows), truth=n_true, predicted=n_pred)
    mostly_in = overlap * 2 >= np.maximum(true_area[:, None], 1)  # true i mostly inside pred j
    holds_many = mostly_in.sum(0) >= 2  # predictions holding most of 2+ true nuclei
    for i in sorted(set(range(n_true)) - set(rows)):
        if (mostly_in[i] & holds_many).any():
            counts["merged"] += 1
        elif true_area[i] < SMALL_AREA:
            counts["small"] += 1
        else:
            counts["other"] += 1
    piece_of = overlap * 2 >= np.maximum(pred_area[None, :], 1)  # pred j mostly inside true i
    covered = (overlap > 0).sum(1) >= 2  # true nuclei touched by 2+ predictions
    for j in sorted(set(range(n_pred)) - set(cols)):
        counts["split piece" if (piece_of[:, j] & covered).any() else "spurious"] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--models", nargs="*", default=["nuclei-unet", "nuclei-maskrcnn"])
    parser.add_argument("--candidate", nargs="*", type=Path, default=[])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description()}; commit {git_commit()}")
    methods = {name: _labels_function(load_model(name, "cpu")) for name in args.models}
    for path in args.candidate:
        methods[candidate_name(path)] = _labels_function(load_model(str(path), "cpu"))
    totals = {name: {} for name in methods}
    for kind, image, truth, _gray in load_images(args.data, args.split):
        for name, predict in methods.items():
            totals[name].setdefault(kind, Counter()).update(error_counts(truth, predict(image)))
    columns = ("truth", "matched", *MISSED, *FALSE)
    print(f"\nErrors at IoU 0.5 on DSB2018 {args.split}, counted over each kind's images")
    print(f"{'method':<34} {'kind':<15} " + " ".join(f"{c:>11}" for c in columns))
    for name, kinds in totals.items():
        for kind, counts in sorted(kinds.items()):
            cells = " ".join(f"{counts[c]:>11}" for c in columns)
            print(f"{name:<34} {kind:<15} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

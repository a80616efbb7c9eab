"""Choose the U-Net's post-processing (seed threshold, minimum size) on
training images, never on val, and store it in a checkpoint's metadata.

    python scripts/tune_postprocess.py RUN_DIR/best.safetensors [--images 80] [--write]

Predictions are made once per image; the sweep only re-runs the cheap
instance derivation. ``--write`` stores the best setting in the checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_instseg import load_model, segment_semantic
from napari_instseg.core.metrics import match_counts
from napari_instseg.core.models import checkpoint
from napari_instseg.core.postprocess import instances_from_classes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
SEED_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
MIN_SIZES = (4, 8, 16, 24)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, "cpu")
    with open(args.data / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in sorted(rng.choice(len(rows), args.images, replace=False))]
    totals: dict = {}
    for row in rows:
        image = tifffile.imread(args.data / "train" / "images" / f"{row['id']}.tif")
        truth = tifffile.imread(args.data / "train" / "masks" / f"{row['id']}.tif")
        result = segment_semantic(image, model, return_probabilities=True)
        interior = np.round(result.probabilities[1] * 255).astype(np.uint8)
        for seed, min_size in itertools.product(SEED_THRESHOLDS, MIN_SIZES):
            labels = instances_from_classes(
                result.classes, min_size, seed_probability=interior, seed_threshold=seed
            )
            counts = match_counts(truth, labels, [0.5, 0.75])
            key = (seed, min_size)
            totals[key] = counts if key not in totals else totals[key] + counts
    scores = {k: v.summary()["ap"] for k, v in totals.items()}
    best = max(scores, key=lambda k: scores[k][0] + scores[k][1])
    for key, (ap50, ap75) in sorted(scores.items()):
        mark = " <- best" if key == best else ""
        print(f"seed {key[0]:.2f} min_size {key[1]:>3}: AP50 {ap50:.3f} AP75 {ap75:.3f}{mark}")
    if args.write:
        state, metadata = checkpoint.load_checkpoint(args.checkpoint)
        metadata.pop("format_version")
        metadata["postprocess"] = {
            **metadata.get("postprocess", {}),
            "seed_threshold": best[0],
            "min_size": best[1],
            "tuned_on": f"{args.images} DSB2018 train images",
        }
        checkpoint.save_checkpoint(args.checkpoint, state, metadata)
        print(f"wrote seed_threshold={best[0]} min_size={best[1]} to {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Choose a bundled model's post-processing on training images, never on
val, and store it in the checkpoint's metadata: the U-Net's seed threshold
and minimum size, or the Mask R-CNN's score and mask thresholds.

    python scripts/tune_postprocess.py RUN_DIR/best.safetensors [--images 80] [--write]

Predictions are made once per image; the sweep only re-runs the cheap
instance derivation (or score filtering). ``--write`` stores the best setting.
The images are drawn from the train images less the frozen test split, as in
``train_bundled.py`` (``--include-test`` with it for a final retrain on all data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_instseg import load_model
from napari_instseg.core.models import checkpoint
from napari_instseg.core.training.samples import AnnotatedImage
from napari_instseg.core.training.tuning import (
    best_detection_thresholds,
    best_postprocess,
    sweep_detection_thresholds,
    sweep_postprocess,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bundled import DATA, SPLIT_FILE, held_out_ids, manifest_rows  # noqa: E402


def tuning_rows(data: Path, images: int, exclude: set[str]) -> list[dict]:
    """The manifest rows of the ``images`` train images settings are chosen on:
    a fixed draw (seed 0) from the train images less ``exclude``."""
    rows = manifest_rows(data, "train", exclude)
    rng = np.random.default_rng(0)
    return [rows[i] for i in sorted(rng.choice(len(rows), images, replace=False))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument("--exclude-split", type=Path, default=SPLIT_FILE)
    held_out.add_argument("--include-test", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, "cpu")
    exclude = held_out_ids(None if args.include_test else args.exclude_split)
    rows = tuning_rows(args.data, args.images, exclude)
    samples = [
        AnnotatedImage.create(
            row["id"],
            tifffile.imread(args.data / "train" / "images" / f"{row['id']}.tif"),
            tifffile.imread(args.data / "train" / "masks" / f"{row['id']}.tif"),
            model.info.normalization,
        )
        for row in rows
    ]
    if model.info.architecture == "maskrcnn":
        by_threshold = sweep_detection_thresholds(model, samples)
        best = best_detection_thresholds(by_threshold)
        for (score, mask), (ap50, ap75) in sorted(by_threshold.items()):
            chosen = best == {"score_threshold": score, "mask_threshold": mask}
            mark = " <- best" if chosen else ""
            print(f"score {score:.2f} mask {mask:.2f}: AP50 {ap50:.3f} AP75 {ap75:.3f}{mark}")
    else:
        scores = sweep_postprocess(model, samples)
        best = best_postprocess(scores)
        for (seed, min_size), (ap50, ap75) in sorted(scores.items()):
            mark = " <- best" if best == {"seed_threshold": seed, "min_size": min_size} else ""
            print(f"seed {seed:.2f} min_size {min_size:>3}: AP50 {ap50:.3f} AP75 {ap75:.3f}{mark}")
    if args.write:
        state, metadata = checkpoint.load_checkpoint(args.checkpoint)
        metadata.pop("format_version")
        metadata["postprocess"] = {
            **metadata.get("postprocess", {}),
            **best,
            "tuned_on": f"{args.images} DSB2018 train images"
            + ("" if args.include_test else f" (not the {len(exclude)} test images)"),
        }
        checkpoint.save_checkpoint(args.checkpoint, state, metadata)
        print(f"wrote {best} to {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

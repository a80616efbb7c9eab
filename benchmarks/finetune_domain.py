"""Fine-tuning nuclei-unet on 8 images of an unfamiliar domain, within 5 minutes.

    python benchmarks/finetune_domain.py [--minutes 5] [--threads 2]

The domain is built from DSB2018 val fluorescence images (never seen in
training): half the magnification (nuclei a quarter of the area) and
a brightfield-like look (inverted, low contrast, noisy, slightly blurred),
stored as uint16. The first 8 images are the user's annotations (the
``train`` command's default 20% of them validate); the next ones are the
test set. AP50 on the test set is measured before and after, through the
public API, in one run.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage
from skimage.transform import rescale

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, machine_description  # noqa: E402

from napari_instseg import load_model, segment_semantic  # noqa: E402
from napari_instseg.core.draining import drain  # noqa: E402
from napari_instseg.core.labels.metrics import match_counts  # noqa: E402
from napari_instseg.core.labels.postprocess import relabel_sequential  # noqa: E402
from napari_instseg.core.training import finetune  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"


def to_domain(image: np.ndarray, labels: np.ndarray, seed: int):
    """Half magnification, inverted low-contrast noisy brightfield look, uint16."""
    rng = np.random.default_rng(seed)
    gray = image[..., 0].astype(np.float32) if image.ndim == 3 else image.astype(np.float32)
    small = rescale(gray, 0.5, anti_aliasing=True, preserve_range=True)
    small_labels = relabel_sequential(
        rescale(labels, 0.5, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    )
    low, high = np.percentile(small, [1, 99.8])
    x = np.clip((small - low) / max(high - low, 1e-6), 0, 1)
    x = 0.75 - 0.3 * x**0.8  # inverted, compressed contrast
    x = ndimage.gaussian_filter(x, 0.8) + rng.normal(0, 0.04, x.shape)
    return (np.clip(x, 0, 1) * 4000 + 200).astype(np.uint16), small_labels


def build_domain(data: Path, n_test: int):
    with open(data / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val" and r["gray_rgb"] == "True"]
    out = []
    for i, row in enumerate(rows[: 8 + n_test]):
        image = tifffile.imread(data / "val" / "images" / f"{row['id']}.tif")
        labels = tifffile.imread(data / "val" / "masks" / f"{row['id']}.tif")
        out.append((row["id"], *to_domain(image, labels, i)))
    return out[:8], out[8:]


def ap50(model, images) -> float:
    total = None
    for _, image, truth in images:
        pred = segment_semantic(image, model, return_probabilities=False).instances.labels
        counts = match_counts(truth, pred, [0.5])
        total = counts if total is None else total + counts
    return total.summary()["ap"][0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test-images", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: train's")
    parser.add_argument("--seed", type=int, default=0, help="validation split and training")
    parser.add_argument("--save", type=Path, help="also save the fine-tuned model here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description()}; commit {git_commit()}")
    annotated, test = build_domain(args.data, args.test_images)
    base = load_model("nuclei-unet", "cpu")
    before = ap50(base, test)
    samples = [
        finetune.annotated(name, image, labels, base.info) for name, image, labels in annotated
    ]
    start = time.perf_counter()
    job = finetune.prepare(
        samples,
        model=base,
        max_minutes=args.minutes,
        device="cpu",
        name="nuclei-unet-domain",
        seed=args.seed,
        learning_rate=args.learning_rate,
    )
    drain(job.trainer.run())
    best = job.save(args.save or Path(job.trainer.run_dir) / "final.safetensors")
    seconds = time.perf_counter() - start
    after = ap50(load_model(best, "cpu"), test)
    print(
        f"domain: DSB2018 val fluorescence at 0.5x magnification, inverted low-contrast, "
        f"noisy, uint16; {len(annotated)} annotated images "
        f"({len(job.trainer.train_samples)} train / {len(job.trainer.val_samples)} val), "
        f"{len(test)} test images ({sum(t[2].max() for t in test)} nuclei)"
    )
    print(
        f"fine-tuning: {job.trainer.state.iteration} iterations in {seconds / 60:.1f} min "
        f"(budget {args.minutes} min, {args.threads} threads, seed {args.seed}, "
        f"learning rate {job.trainer.config.learning_rate})"
    )
    print(
        f"AP50 on the test images: before {before:.3f}, after {after:.3f}, "
        f"change {after - before:+.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

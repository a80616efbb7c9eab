"""The review loop on a new microscope: correct k images, fine-tune a few CPU
minutes, re-segment the rest; what it buys on images never trained or tuned on.

    python benchmarks/review_loop.py [--domain dim-12bit large-inverted] \\
        [--model nuclei-unet nuclei-maskrcnn] [--minutes 5] [--rounds 2 4 8]

Two shifted domains are built from the DSB2018 val gray images (which no
bundled model trained on), as issue 35 describes them:

- ``large-inverted``: nuclei 2.5x larger, dark on bright, blurred, noisy;
- ``dim-12bit``: half the magnification, a 12-bit camera, uneven illumination
  and photon noise.

The first ``--pool`` images are the user's folder, the next ``--test`` images
the test share (never corrected, trained or tuned on). Each round goes
through the Image series core as the widget does: the next images of the
folder are "corrected" (their ground truth saved as reviewed labels), the
model is fine-tuned on all reviewed images within the time budget (from the
bundled one, or with ``--continue-training`` from the previous round's, as the
widget does), and the images not reviewed are segmented again. Printed per
round: AP50/AP75 on the test share, and the objects the user had to fix per
corrected image (missed, spurious or wrongly outlined objects at IoU 0.5,
counted on the segmentation they were shown).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage
from skimage.transform import rescale

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, machine_description  # noqa: E402

from napari_instseg import load_model  # noqa: E402
from napari_instseg.core.draining import drain  # noqa: E402
from napari_instseg.core.engine.diameter import typical_diameter  # noqa: E402
from napari_instseg.core.labels.metrics import match_counts  # noqa: E402
from napari_instseg.core.labels.postprocess import relabel_sequential  # noqa: E402
from napari_instseg.core.series.folder import ImageSeries  # noqa: E402
from napari_instseg.core.series.runs import (  # noqa: E402
    iter_segment_series,
    reviewed_samples,
)
from napari_instseg.core.training import finetune  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"


def _normalised_gray(image: np.ndarray) -> np.ndarray:
    gray = image[..., 0].astype(np.float32) if image.ndim == 3 else image.astype(np.float32)
    low, high = np.percentile(gray, [1, 99.8])
    return np.clip((gray - low) / max(high - low, 1e-6), 0, 1)


def large_inverted(image, labels, rng):
    """Nuclei 2.5x larger (a 512 px crop), dark on bright, blurred, noisy, uint16."""
    x = rescale(_normalised_gray(image), 2.5, order=1, preserve_range=True)
    y = rescale(labels, 2.5, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    x, y = x[:512, :512], relabel_sequential(y[:512, :512])
    x = 0.85 - 0.5 * x  # dark nuclei on a bright background
    x = ndimage.gaussian_filter(x, 2.0) + rng.normal(0, 0.05, x.shape)
    return (np.clip(x, 0, 1) * 30000 + 500).astype(np.uint16), y


def dim_12bit(image, labels, rng):
    """Half magnification, uneven illumination, photon noise, 12-bit values."""
    x = rescale(_normalised_gray(image), 0.5, anti_aliasing=True, preserve_range=True)
    y = rescale(labels, 0.5, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    yy, xx = np.mgrid[: x.shape[0], : x.shape[1]] / max(x.shape)
    illumination = 0.15 + 0.85 * np.exp(-((yy - 0.3) ** 2 + (xx - 0.7) ** 2) / 0.2)
    photons = rng.poisson((0.1 + x) * illumination * 15)  # a dim signal: few photons
    return np.clip(photons * 4095 / 40, 0, 4095).astype(np.uint16), relabel_sequential(y)


DOMAINS = {"large-inverted": large_inverted, "dim-12bit": dim_12bit}


ONE_MICROSCOPE_DIAMETER = 18.0  # px: the bundled models' trained size, before the change


def one_magnification(image, labels):
    """``image`` and ``labels`` rescaled so that the nuclei measure
    ``ONE_MICROSCOPE_DIAMETER`` px: DSB's screens come from many microscopes
    and magnifications (typical diameters 10-50 px), a user's folder from one."""
    diameter = typical_diameter(labels)
    if diameter is None:
        return image, labels
    factor = ONE_MICROSCOPE_DIAMETER / diameter
    image = rescale(image, factor, order=1, channel_axis=-1 if image.ndim == 3 else None,
                    anti_aliasing=factor < 1, preserve_range=True)  # fmt: skip
    labels = rescale(labels, factor, order=0, preserve_range=True, anti_aliasing=False)
    return image, relabel_sequential(labels.astype(np.int32))


def build(data: Path, domain: str, pool: int, test: int, same_size: bool = False):
    with open(data / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val" and r["gray_rgb"] == "True"]
    rng = np.random.default_rng(35)
    made = []
    for row in rows[: pool + test]:
        image = tifffile.imread(data / "val" / "images" / f"{row['id']}.tif")
        labels = tifffile.imread(data / "val" / "masks" / f"{row['id']}.tif")
        if same_size:
            image, labels = one_magnification(image, labels)
        made.append((row["id"][:12], *DOMAINS[domain](image, labels, rng)))
    return made[:pool], made[pool:]


def fixes(truth: np.ndarray, pred: np.ndarray) -> int:
    """Objects a user adds, deletes or redraws: the unmatched on both sides at IoU 0.5."""
    counts = match_counts(truth, pred, [0.5])
    return int(counts.fp[0] + counts.fn[0])


def run(model_name: str, domain: str, args) -> list[dict]:
    from napari_instseg import segment

    pool, test = build(args.data, domain, args.pool, args.test, args.same_size)
    folder = Path(tempfile.mkdtemp()) / domain
    folder.mkdir()
    for name, image, _ in pool:
        tifffile.imwrite(folder / f"{name}.tif", image)
    truth = {f"{name}.tif": labels for name, _, labels in pool}
    series = ImageSeries(folder)
    base = load_model(model_name, "cpu")

    def test_scores(model, diameter=None):
        """AP50, AP75 and the objects to fix per image on the test share (the
        same images in every round)."""
        total = None
        for _, image, labels in test:
            pred = segment(image, model, device="cpu", diameter=diameter)[0].labels
            counts = match_counts(labels, pred, [0.5, 0.75])
            total = counts if total is None else total + counts
        ap = total.summary()["ap"]
        return float(ap[0]), float(ap[1]), (total.fp[0] + total.fn[0]) / len(test)

    drain(iter_segment_series(series, base, device="cpu"))
    rows, model, reviewed = [], base, 0
    ap50, ap75, test_fixes = test_scores(base)
    rows.append({"k": 0, "ap50": ap50, "ap75": ap75, "fixes": None, "minutes": 0.0,
                 "test_fixes": test_fixes})  # fmt: skip
    for k in args.rounds:
        shown = [series.read_labels(i) for i in range(reviewed, k)]
        fixed = [fixes(truth[series.images[i].key], labels) for i, labels in
                 zip(range(reviewed, k), shown)]  # fmt: skip
        objects = sum(int(truth[series.images[i].key].max()) for i in range(reviewed, k))
        for i in range(reviewed, k):  # the user's corrections: the ground truth
            series.save(i, truth[series.images[i].key], reviewed=True)
        reviewed = k
        start = time.perf_counter()
        samples = reviewed_samples(series, base.info)
        start_from = model if args.continue_training else base
        job = finetune.prepare(
            samples, model=start_from, max_minutes=args.minutes, device="cpu",
            name=f"{model_name}-{domain}-{k}", seed=0, at_model_size=args.train_at == "model",
        )  # fmt: skip
        drain(job.trainer.run())
        saved = job.save(Path(job.trainer.run_dir) / "model.safetensors")
        minutes = (time.perf_counter() - start) / 60
        model = load_model(saved, "cpu")
        segmented = drain(iter_segment_series(series, model, redo_segmented=True, device="cpu"))
        # the test share is the rest of the folder: segmented as the series does
        ap50, ap75, test_fixes = test_scores(model, segmented.diameter)
        others = {}
        if args.compare:
            others = {f"diameter {d}": test_scores(model, d) for d in (None, "auto")}
            # what the reviewed labels' object size alone buys, without training
            others["bundled model, same diameter"] = test_scores(base, segmented.diameter)
        rows.append({"k": k, "ap50": ap50, "ap75": ap75, "fixes": np.mean(fixed),
                     "fixes_per_100": 100 * sum(fixed) / max(objects, 1),
                     "test_fixes": test_fixes,
                     "minutes": minutes, "kept": job.trainer.state.best_iteration,
                     "iterations": job.trainer.state.iteration})  # fmt: skip
        print(
            f"  {model_name} {domain} k={k}: AP50 {ap50:.3f} AP75 {ap75:.3f} "
            f"(diameter {segmented.diameter}), "
            f"{np.mean(fixed):.1f} fixes per corrected image, "
            f"{test_fixes:.1f} per test image, {minutes:.1f} min; "
            + ", ".join(f"{what}: {a:.3f}/{b:.3f}" for what, (a, b, _) in others.items()),
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--domain", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--model", nargs="+", default=["nuclei-unet", "nuclei-maskrcnn"])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--pool", type=int, default=12)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--continue-training",
        action="store_true",
        help="start each round from the previous round's model (as the widget does: "
        "training chooses the new model), not from the bundled one",
    )
    parser.add_argument(
        "--same-size",
        action="store_true",
        help="one microscope: bring every source image's nuclei to 18 px before the "
        "domain's change (DSB mixes magnifications)",
    )
    parser.add_argument(
        "--train-at",
        choices=["model", "native"],
        default="model",
        help="fine-tune with each corrected image rescaled to the model's object size "
        "(the series' way) or at the images' own size",
    )
    parser.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="skip scoring each round's model at other diameters and the bundled model "
        "at the reviewed one (a third of the run's time)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description()}; commit {git_commit()}")
    start = "the previous round's model" if args.continue_training else "the bundled model"
    print(f"pool {args.pool} images, test {args.test}, fine-tune {args.minutes} min per round "
          f"from {start}, at the {args.train_at} object size")  # fmt: skip
    for domain in args.domain:
        for model_name in args.model:
            rows = run(model_name, domain, args)
            print(f"{domain}, {model_name}:")
            print(
                "  k  AP50   AP75   fixes/image  per 100 objects  test fixes/image"
                "  minutes  kept/iterations"
            )
            for row in rows:
                fixes_text = "-" if row["fixes"] is None else f"{row['fixes']:.1f}"
                per_100 = f"{row['fixes_per_100']:.1f}" if "fixes_per_100" in row else "-"
                kept = f"{row.get('kept', '-')}/{row.get('iterations', '-')}"
                print(f"  {row['k']}  {row['ap50']:.3f}  {row['ap75']:.3f}  {fixes_text:>11}"
                      f"  {per_100:>15}  {row['test_fixes']:16.1f}"
                      f"  {row['minutes']:7.1f}  {kept}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much a U-Net's instances could gain from other rules, with the network
unchanged: other post-processing of its probabilities, and other scales.

    python benchmarks/unet_instance_rules.py [--model nuclei-unet | CKPT]
        [--split val|tune] [--skip-scales] [--threads 2]

Post-processing: the network runs once per image; its class probabilities
then go through the engine's rule (seeds where the interior probability
reaches the seed threshold, grown 4 px into the foreground) and variants:

- ``watershed growth``: seeds flood the whole foreground by watershed on the
  interior probability, instead of 4 px of dilation;
- ``foreground p(bg) < t``: the foreground where the background probability
  is under t, instead of the most probable class;
- ``h-maxima markers``: one marker per h-maximum of the smoothed interior
  probability (splits seeds that a dip, not a boundary, separates);
- ``grown / shrunk 1 px``: the engine's objects with their outline moved by
  one pixel (4-connected), to see whether masks are too small or too large.

Scales: the whole call at fixed rescale factors, the engine's
``diameter="auto"`` rule (measured on the native pass) aimed at f times the
trained diameter, the per-image best factor (an oracle: the most any rule
choosing one factor per image could reach), and the class probabilities of
the native pass averaged with those of the image enlarged 1.25x, 1.5x or 2x
(resampled back), then the engine's rule (multi-scale fusion).

``tune`` is the 80 train images ``scripts/tune_postprocess.py`` chooses
settings on; ``val`` the shared val split. The test split is not read here:
these are choices, and it is scored only for bundling.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, machine_description  # noqa: E402
from accuracy_and_speed import DEFAULT_DATA, load_images, load_rows, summed_ap  # noqa: E402

from napari_instseg import load_model, segment_semantic  # noqa: E402
from napari_instseg.core.engine.diameter import auto_rescale, typical_diameter  # noqa: E402
from napari_instseg.core.labels.metrics import match_counts  # noqa: E402
from napari_instseg.core.labels.postprocess import (  # noqa: E402
    instances_from_classes,
    relabel_sequential,
    small_ids,
)
from napari_instseg.core.training.augmentation import resampled  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from train_bundled import SPLIT_FILE, held_out_ids  # noqa: E402
from tune_postprocess import tuning_rows  # noqa: E402

SCALES = (0.5, 0.7, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
AIMS = (0.8, 1.0, 1.2, 1.4)  # auto's target, as factors of the trained diameter
FUSED = (1.25, 1.5, 2.0)  # enlargements whose probabilities are averaged with native


def probabilities_enlarged(model, image: np.ndarray, factor: float) -> np.ndarray:
    """(3, H, W) class probabilities of ``image`` enlarged ``factor`` times,
    resampled back to its size."""
    planes = image if image.ndim == 3 else image[..., None]
    shape = tuple(int(round(side * factor)) for side in planes.shape[:2])
    enlarged = resampled(planes.astype(np.float32), shape)
    p = segment_semantic(
        enlarged if image.ndim == 3 else enlarged[..., 0], model, return_probabilities=True
    ).probabilities
    return np.moveaxis(resampled(np.moveaxis(p, 0, -1), planes.shape[:2]), -1, 0)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    return relabel_sequential(np.where(small_ids(labels, min_size)[labels], 0, labels))


def engine_rule(p, seed, min_size):
    return instances_from_classes(p.argmax(0), min_size, seed_probability=p[1], seed_threshold=seed)


def watershed_growth(p, seed, min_size, foreground_below=None):
    from skimage.segmentation import watershed

    foreground = p.argmax(0) > 0 if foreground_below is None else p[0] < foreground_below * 255
    seeds, _ = ndimage.label((p[1] >= round(seed * 255)) & foreground)
    grown = watershed(255 - p[1].astype(np.int32), seeds, mask=foreground | (seeds > 0))
    return _drop_small(grown, min_size)


def hmaxima_markers(p, seed, min_size, h=0.1, sigma=1.0):
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    interior = ndimage.gaussian_filter(p[1].astype(np.float32) / 255, sigma)
    foreground = p.argmax(0) > 0
    markers, _ = ndimage.label(h_maxima(interior, h) & foreground, structure=np.ones((3, 3)))
    grown = watershed(-interior, markers, mask=foreground)
    return _drop_small(grown, min_size)


_CROSS = ndimage.generate_binary_structure(2, 1)


def moved_outline(p, seed, min_size, pixels):
    """The engine's objects grown (``pixels`` > 0) or shrunk by that many pixels."""
    labels = engine_rule(p, seed, min_size)
    if pixels > 0:
        from skimage.segmentation import expand_labels

        return expand_labels(labels, pixels)
    for _ in range(-pixels):  # keep pixels whose 4 neighbours are of the same object
        same = (ndimage.grey_erosion(labels, footprint=_CROSS) == labels) & (
            ndimage.grey_dilation(labels, footprint=_CROSS) == labels
        )
        labels = np.where(same, labels, 0)
    return labels


def rules(seed: float, min_size: int) -> dict:
    """Name -> function of the (3, H, W) uint8 probabilities giving labels."""
    found = {
        f"engine (seed {seed}, min size {min_size})": engine_rule,
        "watershed growth": watershed_growth,
        "h-maxima markers, h 0.1": hmaxima_markers,
        "h-maxima markers, h 0.2": functools.partial(hmaxima_markers, h=0.2),
    }
    for t in (0.4, 0.5, 0.6):
        found[f"foreground p(bg) < {t}, watershed growth"] = functools.partial(
            watershed_growth, foreground_below=t
        )
    found["engine, every object grown 1 px"] = functools.partial(moved_outline, pixels=1)
    found["engine, every object shrunk 1 px"] = functools.partial(moved_outline, pixels=-1)
    return {name: functools.partial(fn, seed=seed, min_size=min_size) for name, fn in found.items()}


def images_of(data: Path, split: str):
    """(kind, image, truth, gray) of each image of ``split`` (val or tune)."""
    if split == "val":
        return load_images(data, "val")
    return load_rows(data, tuning_rows(data, 80, held_out_ids(SPLIT_FILE)))


def ap(counts: list) -> str:
    a50, a75 = summed_ap(counts)
    return f"{a50:.3f} / {a75:.3f}"


def report(name: str, per_image: list[tuple]) -> None:
    """AP50 / AP75 (counts summed) over the gray images and all images."""
    gray = [c for c, is_gray in per_image if is_gray]
    print(f"{name:<48} {ap(gray):>15} {ap([c for c, _ in per_image]):>15}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei-unet")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", choices=["val", "tune"], default="val")
    parser.add_argument("--skip-scales", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, "cpu")
    post = model.info.postprocess
    seed, min_size = float(post.get("seed_threshold", 0.5)), int(post.get("min_size", 8))
    print(f"{machine_description()}, commit {git_commit()}, {args.model}, {args.split}")
    named_rules = rules(seed, min_size)
    by_rule = {name: [] for name in named_rules}
    by_scale = {scale: [] for scale in SCALES}
    by_fusion = {factor: [] for factor in FUSED}
    measured = []
    for _kind, image, truth, gray in images_of(args.data, args.split):
        native = segment_semantic(image, model, return_probabilities=True)
        p = np.round(native.probabilities * 255).astype(np.uint8)
        for name, rule in named_rules.items():
            by_rule[name].append((match_counts(truth, rule(p), [0.5, 0.75]), gray))
        if args.skip_scales:
            continue
        measured.append(typical_diameter(native.instances.labels))
        for factor in FUSED:
            fused = (native.probabilities + probabilities_enlarged(model, image, factor)) / 2
            labels = engine_rule(np.round(fused * 255).astype(np.uint8), seed, min_size)
            by_fusion[factor].append((match_counts(truth, labels, [0.5, 0.75]), gray))
        for scale in SCALES:
            labels = segment_semantic(image, model, rescale=scale).instances.labels
            by_scale[scale].append((match_counts(truth, labels, [0.5, 0.75]), gray))
    print(f"\n{'post-processing (AP50 / AP75)':<48} {'gray':>15} {'all':>15}")
    for name, per_image in by_rule.items():
        report(name, per_image)
    if args.skip_scales:
        return 0
    print(f"\n{'scale (AP50 / AP75)':<48} {'gray':>15} {'all':>15}")
    for scale in SCALES:
        report(f"rescale {scale}", by_scale[scale])
    trained = model.info.object_diameter
    logs = np.log(SCALES)
    for aim in AIMS:
        chosen = []
        for i, diameter in enumerate(measured):
            scale = 1.0
            if auto_rescale(diameter, trained) != 1.0:  # outside the engine's band
                scale = SCALES[int(np.argmin(abs(logs - np.log(aim * trained / diameter))))]
            chosen.append(by_scale[scale][i])
        report(f"auto aimed at {aim}x trained (nearest factor)", chosen)
    best = [
        max((by_scale[s][i] for s in SCALES), key=lambda pair: sum(pair[0].summary()["ap"]))
        for i in range(len(measured))
    ]
    report("per-image best factor (oracle)", best)
    for factor in FUSED:
        report(f"probabilities of 1x and {factor}x averaged", by_fusion[factor])
    return 0


if __name__ == "__main__":
    sys.exit(main())

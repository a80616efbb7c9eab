"""Object size and test-time augmentation: accuracy and time cost.

    python benchmarks/scale_and_augmentation.py [--split val|test] [--threads 2] [--limit N]

On the gray images of a split (default val; ``test`` only to report a model
being considered for bundling, never to tune), for each bundled model:

- native size as it is, and with ``diameter="auto"`` (what auto costs where it
  should change nothing);
- the images and masks resized x0.5 and x2, predicted as they are and with
  ``diameter="auto"`` (issue 17's target: auto within 0.03 AP50 of native);
- native with ``augment=True`` (test-time augmentation).

AP50/AP75 are summed over images with 95% resampling intervals (as in
``accuracy_and_speed.py``); seconds are the mean per image of the whole call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.transform import resize

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, machine_description  # noqa: E402
from accuracy_and_speed import DEFAULT_DATA, THRESHOLDS, load_images, resampled_interval  # noqa: E402

from napari_instseg import load_model, segment_instances, segment_semantic  # noqa: E402
from napari_instseg.core.labels.metrics import match_counts  # noqa: E402

CASES = [  # (name, scale of the image, engine options)
    ("native", 1.0, {}),
    ("native, diameter auto", 1.0, {"diameter": "auto"}),
    ("x0.5", 0.5, {}),
    ("x0.5, diameter auto", 0.5, {"diameter": "auto"}),
    ("x2", 2.0, {}),
    ("x2, diameter auto", 2.0, {"diameter": "auto"}),
    ("native, augment", 1.0, {"augment": True}),
]


def scaled(image: np.ndarray, truth: np.ndarray, scale: float):
    if scale == 1.0:
        return image, truth
    shape = tuple(max(1, round(s * scale)) for s in truth.shape)
    image = resize(
        image, (*shape, *image.shape[2:]), order=1, preserve_range=True, anti_aliasing=scale < 1
    ).astype(image.dtype)
    truth = resize(truth, shape, order=0, preserve_range=True, anti_aliasing=False)
    return image, truth.astype(np.int32)


def labels_of(model, image, options):
    if model.info.task == "semantic":
        return segment_semantic(
            image, model, return_probabilities=False, **options
        ).instances.labels
    return segment_instances(image, model, **options).labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N gray images")
    parser.add_argument("--models", nargs="+", default=["nuclei-unet", "nuclei-maskrcnn"])
    parser.add_argument("--cases", nargs="+", help="only these cases (names as printed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {machine_description()}, commit {git_commit()}, split {args.split}")
    images = [(img, truth) for _, img, truth, gray in load_images(args.data, args.split) if gray]
    images = images[: args.limit]
    print(f"# {len(images)} gray images")
    for name in args.models:
        model = load_model(name, "cpu")
        print(f"\n{name} (trained diameter {model.info.object_diameter} px)")
        print(f"{'case':<24} {'AP50':>6} {'95% interval':>14} {'AP75':>6} {'s/image':>8}")
        for case, scale, options in CASES:
            if args.cases and case not in args.cases:
                continue
            counts, seconds = [], 0.0
            for image, truth in images:
                image, truth = scaled(image, truth, scale)
                start = time.perf_counter()
                labels = labels_of(model, image, options)
                seconds += time.perf_counter() - start
                counts.append(match_counts(truth, labels, THRESHOLDS))
            total = counts[0]
            for c in counts[1:]:
                total = total + c
            ap = total.summary()["ap"]
            low, high = resampled_interval(counts, 0.5)
            print(
                f"{case:<24} {ap[0]:>6.3f} {f'{low:.3f}-{high:.3f}':>14} {ap[3]:>6.3f} "
                f"{seconds / len(images):>8.3f}"
            )


if __name__ == "__main__":
    main()

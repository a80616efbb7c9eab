"""Accuracy of the bundled models on the DSB2018 val and test splits, and CPU speed.

    python benchmarks/accuracy_and_speed.py [--data ../shared/data/dsb2018] [--threads 2]
        [--split val|test|both] [--skip-accuracy] [--skip-speed] [--candidate CKPT ...]

Accuracy: AP = TP / (TP + FP + FN) with one-to-one matching at IoU tau, counts
summed over images (as in the StarDist paper), for all images of a split, for
the gray subset (the manifest's ``gray_rgb``) and, beside it, for the gray
images with bright nuclei, and per image kind (``scripts/make_test_split.py``:
size and colour), through the public API (``segment_semantic`` /
``segment_instances``). A classical Otsu + distance-transform watershed
baseline is measured in the same run. Beside each AP50 and AP75, a 95%
interval from resampling the split's images says how much of a difference
between models the split can show.

Splits: ``val`` is the shared val split; ``test`` is the frozen test split
(``scripts/splits/dsb2018-test.csv``), shared train images that training
leaves out. Test figures are honest only for models trained without them
(their checkpoint's ``training.held_out``, and that of the weights each run
started from, ``training.init``, when it is here); each model's status is printed.

Speed: the whole API call on one 512x512 field (a 2x2 mosaic of val images)
against the machine's yardstick: a torchvision ResNet-18 forward pass on a
1x3x512x512 tensor (float32). Nine rounds after a warm-up, each timing the
yardstick and every model once in turn; each model's ratio is the median of
its ratios to the yardstick of the same round (the machine's speed drifts by a
quarter from minute to minute, which ratios of separate medians took in).
On CPUs with native bfloat16 the engine uses it; the ResNet-18 in bfloat16 is
then printed too, for comparison.
"""

from __future__ import annotations

import argparse
import csv
import functools
import operator
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, interleaved_times, machine_description  # noqa: E402

from napari_instseg import load_model, segment_instances, segment_semantic  # noqa: E402
from napari_instseg.core.devices import cpu_has_fast_bfloat16  # noqa: E402
from napari_instseg.core.labels.metrics import match_counts  # noqa: E402
from napari_instseg.core.models import checkpoint  # noqa: E402
from napari_instseg.core.models.bundled import bundled_weights_path  # noqa: E402
from napari_instseg.core.training.samples import image_kind  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_test_split import KINDS, SPLIT_FILE, kind_of, read_split  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
YARDSTICK = "resnet18 forward (yardstick)"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"


def split_rows(data: Path, split: str) -> list[dict]:
    """The manifest rows of ``val``, or of ``test``: the train rows in the split file."""
    with open(data / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    if split == "val":
        return [r for r in rows if r["split"] == "val"]
    test = {row["id"] for row in read_split(SPLIT_FILE)}
    return [r for r in rows if r["split"] == "train" and r["id"] in test]


def load_images(data: Path, split: str = "val"):
    """(kind, image, labels, gray) of each image of ``split``."""
    yield from load_rows(data, split_rows(data, split))


def load_rows(data: Path, rows: list[dict]):
    """(kind, image, labels, gray) of each manifest row's image."""
    for row in rows:
        folder = data / row["split"]
        image = tifffile.imread(folder / "images" / f"{row['id']}.tif")
        labels = tifffile.imread(folder / "masks" / f"{row['id']}.tif")
        yield kind_of(row), image, labels, row["gray_rgb"] == "True"


def classical_baseline(image: np.ndarray) -> np.ndarray:
    """Otsu threshold (polarity chosen so nuclei are the minority), distance
    transform, h-maxima-like peaks, watershed."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    gray = image.mean(-1) if image.ndim == 3 else image.astype(float)
    gray = gaussian(gray, 1)
    mask = gray > threshold_otsu(gray)
    if mask.mean() > 0.5:
        mask = ~mask
    mask = ndimage.binary_opening(mask, iterations=1)
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(
        distance, min_distance=5, labels=ndimage.label(mask)[0], exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask)


def predictors(device: str = "cpu", classical: bool = True, candidates=()):
    """Name -> labels function: the bundled models, checkpoints ``candidates``
    (paths; named by their run folder) and the classical baseline."""
    found = {}
    if bundled_weights_path("nuclei-unet").exists():
        unet = load_model("nuclei-unet", device)
        found["nuclei-unet"] = lambda img: segment_semantic(img, unet).instances.labels
    if bundled_weights_path("nuclei-maskrcnn").exists():
        mrcnn = load_model("nuclei-maskrcnn", device)
        found["nuclei-maskrcnn"] = lambda img: segment_instances(img, mrcnn).labels
    for path in candidates:
        found[candidate_name(path)] = _labels_function(load_model(str(path), device))
    if classical:
        found["classical (Otsu + watershed)"] = classical_baseline
    return found


def candidate_name(path: Path) -> str:
    return f"candidate {Path(path).parent.name}/{Path(path).stem}"


def _labels_function(loaded):
    if loaded.info.task == "semantic":
        return lambda img: segment_semantic(img, loaded).instances.labels
    return lambda img: segment_instances(img, loaded).labels


SUBSETS = ("all", "gray", "gray-bright")


def subsets_of(image: np.ndarray, truth: np.ndarray, gray: bool) -> tuple[str, ...]:
    """``gray`` is the manifest's gray subset (the targets' subset). It holds 2
    brightfield fields with dark nuclei, so ``gray-bright``, the gray images
    with bright nuclei (fluorescence alone), is shown beside it."""
    if not gray:
        return ("all",)
    bright = image_kind(image, truth) == "gray, bright objects"
    return ("all", "gray", "gray-bright") if bright else ("all", "gray")


def accuracy(data: Path, methods: dict, split: str = "val") -> dict:
    """Per method and subset (``SUBSETS``, then the image kinds present), the
    match counts of each image of ``split`` (in one order)."""
    per_image = {name: {subset: [] for subset in SUBSETS + KINDS} for name in methods}
    for kind, image, truth, gray in load_images(data, split):
        subsets = (*subsets_of(image, truth, gray), kind)
        for name, predict in methods.items():
            counts = match_counts(truth, predict(image), THRESHOLDS)
            for subset in subsets:
                per_image[name][subset].append(counts)
    return {name: {s: c for s, c in subsets.items() if c} for name, subsets in per_image.items()}


def summed_ap(per_image: list) -> np.ndarray:
    """AP at each threshold from counts summed over the images."""
    return functools.reduce(operator.add, per_image).summary()["ap"]


def resampled_interval(per_image: list, threshold: float, draws: int = 2000) -> tuple:
    """95% interval of the summed AP at ``threshold`` when the images are drawn
    again with replacement: how far the figure could move on another set of
    images like these (objects in one image are not independent, so counting
    objects alone would understate it)."""
    column = THRESHOLDS.index(threshold)
    tp, fp, fn = (
        np.array([getattr(counts, kind)[column] for counts in per_image], float)
        for kind in ("tp", "fp", "fn")
    )
    draw = np.random.default_rng(0).integers(0, len(per_image), size=(draws, len(per_image)))
    ap = tp[draw].sum(1) / (tp[draw].sum(1) + fp[draw].sum(1) + fn[draw].sum(1))
    low, high = np.percentile(ap, [2.5, 97.5])
    return float(low), float(high)


def print_accuracy(per_image: dict, split: str = "val") -> None:
    counts = next(iter(per_image.values()), {})
    sizes = ", ".join(f"{subset} {len(c)}" for subset, c in counts.items())
    header = " ".join(f"{t:>6.2f}" for t in THRESHOLDS)
    print(f"\nAP on DSB2018 {split} (images: {sizes})\n{'method':<32} subset         {header}")
    for name, subsets in per_image.items():
        for subset, counts in subsets.items():
            if subset in SUBSETS:
                aps = " ".join(f"{a:>6.3f}" for a in summed_ap(counts))
                print(f"{name:<32} {subset:<14} {aps}")
    print(
        f"\nAP50 and AP75 on DSB2018 {split} with 95% intervals when its images are "
        "resampled (2000 draws; none from a single image)"
    )
    print(f"{'method':<32} subset         {'n':>3} {'AP50':>21} {'AP75':>21}")
    for name, subsets in per_image.items():
        for subset, counts in subsets.items():
            cells = []
            for t in (0.5, 0.75):
                ap = summed_ap(counts)[THRESHOLDS.index(t)]
                low, high = resampled_interval(counts, t)
                interval = f"({low:.3f}-{high:.3f})" if len(counts) > 1 else ""
                cells.append(f"{ap:.3f} {interval:>15}")
            print(f"{name:<32} {subset:<14} {len(counts):>3} " + " ".join(cells).rstrip())


def held_out_status(candidates=()) -> None:
    """Whether each bundled model and candidate was trained without the test images."""
    print(f"\ntest: the {len(read_split(SPLIT_FILE))} train images of {SPLIT_FILE.name}")
    names = [n for n in ("nuclei-unet", "nuclei-maskrcnn") if bundled_weights_path(n).exists()]
    for name in names + [str(path) for path in candidates]:
        print(f"  {name}: {test_exposure(load_model(name, 'cpu').info.training)}")


def test_exposure(training: dict) -> str:
    """Whether weights with this training record saw the test images, following
    ``--init`` back: a run that held them out but started from weights that saw
    them is not honest on them either."""
    held_out = training.get("held_out")
    if not held_out or held_out.startswith("none"):
        return (
            f"NOT held out: trained on {training.get('train_image_count', '?')} train "
            "images, test included, so its test figures are not honest"
        )
    init = training.get("init")
    if not init:
        return f"held out ({held_out})"
    if not Path(init).exists():
        return f"held out in its last run, which started from {init}: not here to check"
    earlier = test_exposure(checkpoint.read_metadata(Path(init)).get("training", {}))
    if earlier.startswith("held out"):
        return f"held out ({held_out}; its start {init} too)"
    return (
        f"NOT held out: its last run held them out, but it started from {init}, "
        "which saw them, so its test figures are not honest"
    )


def speed(data: Path, rounds: int = 9) -> dict:
    """Seconds per call of the yardstick and each bundled model, ``rounds`` each,
    interleaved (``_common.interleaved_times``)."""
    import torchvision

    tiles = [img for _, img, _, _ in load_images(data) if img.shape[:2] == (256, 256)][:4]
    field = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    resnet = torchvision.models.resnet18().eval()
    x = torch.rand(1, 3, 512, 512)

    def yardstick():
        with torch.inference_mode():
            resnet(x)

    functions = {YARDSTICK: yardstick}
    if cpu_has_fast_bfloat16():  # the engine runs bfloat16 here: show the same for ResNet-18

        def yardstick_bfloat16():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                resnet(x)

        functions["resnet18 forward, bfloat16 (for comparison)"] = yardstick_bfloat16
    if bundled_weights_path("nuclei-unet").exists():
        unet = load_model("nuclei-unet", "cpu")
        functions["nuclei-unet segment_semantic"] = lambda: segment_semantic(field, unet)
    if bundled_weights_path("nuclei-maskrcnn").exists():
        mrcnn = load_model("nuclei-maskrcnn", "cpu")
        functions["nuclei-maskrcnn segment_instances"] = lambda: segment_instances(field, mrcnn)
    return interleaved_times(functions, rounds)


def print_speed(times: dict) -> None:
    """Median time of each, and its median ratio to the yardstick of the same round
    (with the lowest and highest ratio of the rounds)."""
    rounds = len(times[YARDSTICK])
    print(f"\nCPU speed, 512x512 field, {rounds} interleaved rounds after a warm-up")
    print(f"{'':<40} {'median':>9}  {'x yardstick (range over rounds)':>32}")
    for name, seconds in times.items():
        ratios = np.array(seconds) / np.array(times[YARDSTICK])
        print(
            f"{name:<40} {np.median(seconds) * 1000:>6.1f} ms  {np.median(ratios):>8.2f}x"
            f"  ({ratios.min():.2f}-{ratios.max():.2f})"
        )


def tiling_agreement(data: Path) -> dict:
    """AP50 between tiled (256 px tiles) and untiled predictions on a 1024x1024 field."""
    field = next(img for _, img, _, _ in load_images(data) if img.shape[:2] == (1024, 1024))
    out = {}
    if bundled_weights_path("nuclei-unet").exists():
        unet = load_model("nuclei-unet", "cpu")
        whole = segment_semantic(field, unet, tile_size=1024).instances.labels
        tiled = segment_semantic(field, unet, tile_size=256, overlap=64).instances.labels
        out["nuclei-unet"] = match_counts(whole, tiled, [0.5]).summary()["ap"][0]
    if bundled_weights_path("nuclei-maskrcnn").exists():
        mrcnn = load_model("nuclei-maskrcnn", "cpu")
        whole = segment_instances(field, mrcnn, tile_size=1024).labels
        tiled = segment_instances(field, mrcnn, tile_size=256, overlap=64).labels
        out["nuclei-maskrcnn"] = match_counts(whole, tiled, [0.5]).summary()["ap"][0]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--split", choices=["val", "test", "both"], default="both")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--candidate",
        type=Path,
        action="append",
        default=[],
        help="a checkpoint to score beside the bundled models (a candidate for bundling)",
    )
    parser.add_argument(
        "--skip-speed", action="store_true", help="no tiling agreement, no speed (accuracy only)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description()}; commit {git_commit()}")
    precision = "bfloat16" if cpu_has_fast_bfloat16() else "float32"
    print(f"engine precision on this CPU: {precision} (NAPARI_INSTSEG_CPU_BFLOAT16=0: float32)")
    if not args.skip_accuracy:
        methods = predictors(candidates=args.candidate)
        for split in ("val", "test") if args.split == "both" else (args.split,):
            if split == "test":
                held_out_status(args.candidate)
            print_accuracy(accuracy(args.data, methods, split), split)
    if args.skip_speed:
        return 0
    agreement = tiling_agreement(args.data)
    print("\nTiled (256 px, overlap 64) vs untiled on a 1024x1024 val field, AP50 between them")
    for name, ap in agreement.items():
        print(f"{name:<32} {ap:.3f}")
    print_speed(speed(args.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

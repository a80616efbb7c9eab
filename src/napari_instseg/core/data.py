"""Annotated image pairs, training targets and microscopy augmentation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

from .files import IMAGE_SUFFIXES
from .normalize import apply_range, percentile_range
from .postprocess import BACKGROUND, BOUNDARY, INTERIOR
from .types import InputError


@dataclass
class AnnotatedImage:
    """An image as (Y, X, C), its annotation and its normalisation range.

    ``labels`` are instance ids, or class ids for semantic training.
    ``instance_classes`` maps instance id -> class index (1 = first class) for
    multi-class instance training; ``ignore_value`` marks unannotated pixels.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    lows: np.ndarray
    highs: np.ndarray
    instance_classes: dict[int, int] | None = None
    ignore_value: int | None = None

    # images are stored (Y, X, C), gray ones too: what the engine's
    # ``channel_axis`` must say when it is given ``image``
    channel_axis = -1

    @cached_property
    def kind(self) -> str:
        """What the image looks like (see ``image_kind``), for balancing
        training draws between kinds of image."""
        return image_kind(self.image, self.labels, self.ignore_value)

    @property
    def object_count(self) -> int:
        """Annotated objects: instance ids other than 0 and the ignore value."""
        not_objects = [0] if self.ignore_value is None else [0, self.ignore_value]
        return len(np.setdiff1d(np.unique(self.labels), not_objects))

    def scoreable(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Truth and a prediction to compare: where the image is not annotated
        (the ignore value), truth has no objects, and predicted objects lying
        mostly there are dropped (neither right nor wrong)."""
        if self.ignore_value is None:
            return self.labels, pred
        ignored = self.labels == self.ignore_value
        return np.where(ignored, 0, self.labels), _without_objects_in(pred, ignored)

    @classmethod
    def create(
        cls,
        name: str,
        image: np.ndarray,
        labels: np.ndarray,
        normalization: dict,
        instance_classes: dict[int, int] | None = None,
        ignore_value: int | None = None,
        annotated_region_only: bool = False,
    ):
        image = np.asarray(image)
        image = image[..., None] if image.ndim == 2 else image
        labels = np.asarray(labels)
        if labels.ndim != 2 or image.ndim != 3 or image.shape[:2] != labels.shape:
            raise InputError(
                f"{name}: image {image.shape} and mask {labels.shape} do not match "
                "(a 2D mask with the image's height and width is needed)"
            )
        if annotated_region_only:
            annotated = labels != 0 if ignore_value is None else (labels != ignore_value)
            annotated &= labels != 0
            if annotated.any():
                ys, xs = np.nonzero(annotated)
                margin = 16
                y0, y1 = max(0, ys.min() - margin), min(labels.shape[0], ys.max() + margin + 1)
                x0, x1 = max(0, xs.min() - margin), min(labels.shape[1], xs.max() + margin + 1)
                image, labels = image[y0:y1, x0:x1], labels[y0:y1, x0:x1]
        lows, highs = percentile_range(image, normalization["low"], normalization["high"])
        return cls(name, image, labels, lows, highs, instance_classes, ignore_value)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Pixels of a TIFF, PNG or JPEG file (TIFF pages as stored).

    Raises InputError with one sentence for missing, empty, truncated or
    unreadable files.
    """
    import logging

    path = Path(path)
    if not path.exists():
        raise InputError("no such file")
    if path.stat().st_size == 0:
        raise InputError("the file is empty")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"unsupported format {path.suffix or '(none)'} (use TIFF, PNG or JPEG)")
    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # its warnings would repeat our one-line error
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            from skimage import io

            image = io.imread(path)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"cannot read image ({reason})") from None
    finally:
        tiff_log.setLevel(level)
    image = np.asarray(image)
    if image.size == 0 or image.ndim < 2:
        raise InputError("the file holds no pixels (empty or truncated image)")
    return image


LABEL_FILE_SUFFIXES = ("_labels", "_masks")  # allowed after the image's stem


def label_stem(path: Path) -> str:
    """``img_07`` for ``img_07.tif``, ``img_07_labels.tif`` or ``img_07_masks.png``."""
    stem = path.stem
    for suffix in LABEL_FILE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return stem


def paired_files(
    images_dir: str | os.PathLike, masks_dir: str | os.PathLike, both_label_files: bool = False
):
    """(stem, image path, mask path) of images with a mask of the same stem
    (a ``_labels`` or ``_masks`` suffix on the mask is allowed; on both files
    with ``both_label_files``, for comparing two folders of label images)."""
    masks = {}
    for folder in (images_dir, masks_dir):
        if not Path(folder).is_dir():
            raise InputError(f"{folder}: no such folder")
    for path in sorted(Path(masks_dir).iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            masks[label_stem(path)] = path
    pairs = []
    for path in sorted(Path(images_dir).iterdir()):
        stem = label_stem(path) if both_label_files else path.stem
        if path.suffix.lower() in IMAGE_SUFFIXES and stem in masks:
            pairs.append((stem, path, masks[stem]))
    return pairs


IGNORE_INDEX = 255  # target value the losses skip


def without_ignored(labels: np.ndarray, ignore_value: int | None) -> np.ndarray:
    """``labels`` with unannotated pixels (``ignore_value``) as background:
    the objects a crop really has. The same array when nothing is ignored.
    (Callers that also need the ignored pixels' mask apply it themselves.)"""
    if ignore_value is None:
        return labels
    return np.where(labels == ignore_value, 0, labels)


def unet_targets(labels: np.ndarray, ignore_value: int | None = None) -> np.ndarray:
    """Background / interior / boundary classes (uint8) from instance labels.

    Boundary is each object's inner rim (1 px), so touching nuclei are
    separated by 2 px of boundary that the engine later splits along.
    Pixels equal to ``ignore_value`` become ``IGNORE_INDEX``.
    """
    ignore = labels == ignore_value if ignore_value is not None else None
    if ignore is not None:  # the mask is needed below, so not without_ignored
        labels = np.where(ignore, 0, labels)
    classes = np.full(labels.shape, BACKGROUND, np.uint8)
    classes[labels > 0] = INTERIOR
    classes[find_boundaries(labels, connectivity=1, mode="inner") & (labels > 0)] = BOUNDARY
    if ignore is not None:
        classes[ignore] = IGNORE_INDEX
    return classes


def touching_zone(labels: np.ndarray, reach: int = 2) -> np.ndarray:
    """Pixels with two different objects within ``reach`` px (a square
    neighbourhood): the rims where touching nuclei meet and the narrow gaps
    between close ones, where a U-Net must draw the line that keeps them apart.
    Such pixels are few, so training can weigh them more (U-Net paper's
    border weights, here as one flat weight)."""
    size = 2 * reach + 1
    labels = np.asarray(labels)
    highest = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
    # background counts as larger than any id, so the minimum is the smallest id nearby
    beyond = np.iinfo(labels.dtype).max if labels.dtype.kind in "iu" else np.inf
    lowest = ndimage.minimum_filter(
        np.where(labels > 0, labels, beyond), size=size, mode="constant", cval=beyond
    )
    return (lowest < highest) & (lowest != beyond)


def read_instance_classes(path: Path) -> dict[int, str]:
    """``label_id,class_name`` rows of a CSV (multi-class instance training)."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"label_id", "class_name"} <= set(rows[0]):
        raise InputError(f"{path}: needs the columns label_id,class_name")
    return {int(r["label_id"]): r["class_name"].strip() for r in rows}


@dataclass
class AugmentConfig:
    crop_size: int = 256
    scale_range: tuple[float, float] = (0.7, 1.5)
    gamma_range: tuple[float, float] = (0.6, 1.6)
    contrast_range: tuple[float, float] = (0.7, 1.3)
    brightness_shift: float = 0.1
    noise_probability: float = 0.3
    noise_sigma: float = 0.05
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    invert_probability: float = 0.25
    gray_probability: float = 0.15
    channel_shuffle_probability: float = 0.2
    # Detail lost as in an image taken at lower magnification and enlarged back
    # (what diameter="auto" does to small nuclei): shrink by a factor, enlarge again.
    lowres_probability: float = 0.0
    lowres_factor: tuple[float, float] = (1.5, 2.5)


def augmented_crop(
    sample: AnnotatedImage, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random (C, S, S) float32 crop and its (S, S) instance labels.

    Geometry: scale jitter, crop (zero-padded when the image is smaller),
    flips and 90-degree rotations. Intensity (on normalised values): gamma,
    contrast/brightness, noise, blur, inversion (fluorescence <-> brightfield)
    and colour handling (grayscale, channel shuffle) so fluorescence and
    H&E/brightfield both train.
    """
    size = config.crop_size
    scale = float(np.exp(rng.uniform(*np.log(config.scale_range))))
    window = max(8, int(round(size / scale)))
    h, w = sample.labels.shape
    y0 = int(rng.integers(0, max(1, h - window + 1)))
    x0 = int(rng.integers(0, max(1, w - window + 1)))
    image = apply_range(sample.image[y0 : y0 + window, x0 : x0 + window], sample.lows, sample.highs)
    labels = sample.labels[y0 : y0 + window, x0 : x0 + window]
    zoom = size / window
    if abs(zoom - 1) > 1e-3:
        image = _zoomed(image, zoom)
        labels = ndimage.zoom(labels, zoom, order=0)
    image, labels = _pad_to(image, labels, size)
    # drawn only when asked for, so recipes without it keep their random sequence
    if config.lowres_probability and rng.random() < config.lowres_probability:
        image = _lost_detail(image, float(rng.uniform(*config.lowres_factor)))

    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]

    image = np.clip(image, 0, None)
    gamma = float(np.exp(rng.uniform(*np.log(config.gamma_range))))
    image = np.clip(image, 0, 1.5) ** gamma
    image = image * rng.uniform(*config.contrast_range) + rng.uniform(
        -config.brightness_shift, config.brightness_shift
    )
    channels = image.shape[-1]
    is_gray = channels == 1 or np.allclose(image[..., 0], image[..., 1:].mean(-1), atol=1e-3)
    if channels > 1 and not is_gray:
        if rng.random() < config.gray_probability:
            image = np.repeat(image.mean(-1, keepdims=True), channels, axis=-1)
        elif rng.random() < config.channel_shuffle_probability:
            image = image[..., rng.permutation(channels)]
    if rng.random() < config.invert_probability:
        image = 1.0 - image
    if rng.random() < config.blur_probability:
        sigma = rng.uniform(*config.blur_sigma)
        image = ndimage.gaussian_filter(image, (sigma, sigma, 0))
    if rng.random() < config.noise_probability:
        image = image + rng.normal(0, rng.uniform(0, config.noise_sigma), image.shape)
    image = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    return image, np.ascontiguousarray(labels)


def _zoomed(image: np.ndarray, zoom: float) -> np.ndarray:
    """(Y, X, C) ``image`` resampled as ``ndimage.zoom(image, (zoom, zoom, 1),
    order=1)`` resamples it (corners aligned, the same shape; equal to 1e-4),
    by torch, which takes a third of scipy's time: the crops are what a GPU
    training waits for."""
    return _resampled(image, tuple(int(round(side * zoom)) for side in image.shape[:2]))


def _resampled(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(Y, X, C) ``image`` linearly resampled to ``shape``, corners aligned."""
    import torch

    planes = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    resampled = torch.nn.functional.interpolate(
        torch.from_numpy(planes)[None], size=shape, mode="bilinear", align_corners=True
    )
    return resampled[0].permute(1, 2, 0).numpy()


def _lost_detail(image: np.ndarray, factor: float) -> np.ndarray:
    """(Y, X, C) ``image`` shrunk ``factor`` times (anti-aliased as skimage's
    resize does) and enlarged back to its shape."""
    sigma = max(0.0, (factor - 1) / 2)
    smoothed = ndimage.gaussian_filter(image, (sigma, sigma, 0))
    small = _zoomed(smoothed, 1 / factor)
    return _resampled(small, image.shape[:2])


def _pad_to(image: np.ndarray, labels: np.ndarray, size: int):
    pad_y, pad_x = max(0, size - labels.shape[0]), max(0, size - labels.shape[1])
    if pad_y or pad_x:
        image = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)))
        labels = np.pad(labels, ((0, pad_y), (0, pad_x)))
    return image[:size, :size], labels[:size, :size]


def image_kind(image: np.ndarray, labels: np.ndarray, ignore_value: int | None = None) -> str:
    """``colour``, ``gray, dark objects`` (brightfield) or ``gray, bright
    objects`` (fluorescence) for a (Y, X, C) image and its instance labels."""
    channels = image.shape[-1]
    if any(not np.array_equal(image[..., 0], image[..., c]) for c in range(1, channels)):
        return "colour"
    objects = labels > 0
    if ignore_value is not None:
        objects &= labels != ignore_value
    intensity = image[..., 0]
    if (
        objects.any()
        and not objects.all()
        and intensity[objects].mean() < intensity[~objects].mean()
    ):
        return "gray, dark objects"
    return "gray, bright objects"


def _without_objects_in(labels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``labels`` without the objects lying mostly inside ``region``."""
    inside = np.bincount(labels[region].ravel(), minlength=int(labels.max()) + 1)
    total = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    drop = inside * 2 > total
    drop[0] = False
    return np.where(drop[labels], 0, labels)

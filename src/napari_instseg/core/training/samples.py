"""Annotated images for training and scoring, and the targets the losses
train on (U-Net classes, touching zones, ignored pixels)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries
from skimage.transform import rescale, resize

from ..engine.diameter import rescale_for, typical_diameter
from ..engine.normalize import percentile_range
from ..labels.postprocess import BACKGROUND, BOUNDARY, INTERIOR
from ..types import InputError


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

    def rescaled(self, factor: float) -> AnnotatedImage:
        """The same annotation ``factor`` times as large (image interpolated,
        smoothed first when shrinking; labels nearest), normalisation kept."""
        if abs(factor - 1) < 1e-3:
            return self
        shape = tuple(max(1, int(round(side * factor))) for side in self.labels.shape)
        image = rescale(
            self.image.astype(np.float32), factor, order=1, channel_axis=-1,
            anti_aliasing=factor < 1, preserve_range=True,
        )  # fmt: skip
        labels = resize(self.labels, shape, order=0, preserve_range=True, anti_aliasing=False)
        labels = labels.astype(self.labels.dtype)
        return replace(self, image=image[: shape[0], : shape[1]], labels=labels)

    def split_off(self, fraction: float) -> tuple[AnnotatedImage, AnnotatedImage]:
        """The image cut across its longer side: the first ``1 - fraction`` of
        it and the rest (objects on the cut are partly in each)."""
        axis = 0 if self.labels.shape[0] >= self.labels.shape[1] else 1
        cut = int(round(self.labels.shape[axis] * (1 - fraction)))

        def part(span: slice, name: str) -> AnnotatedImage:
            index = (span, slice(None)) if axis == 0 else (slice(None), span)
            return replace(self, name=name, image=self.image[index], labels=self.labels[index])

        return part(slice(0, cut), self.name), part(slice(cut, None), f"{self.name} (strip)")

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


def at_object_size(
    samples: list[AnnotatedImage], diameter: float
) -> tuple[list[AnnotatedImage], list[float]]:
    """``samples`` rescaled so that their objects measure ``diameter`` px (a
    model's trained size), each by its own labels' typical diameter; samples
    with too few objects to measure take the median factor of the others.
    Fine-tuning at the size a model already handles leaves the few corrected
    images to teach the new look, not a new scale. Returns the samples and
    the factors used."""
    measured = [typical_diameter(without_ignored(s.labels, s.ignore_value)) for s in samples]
    known = [rescale_for(d, diameter) for d in measured if d is not None]
    fallback = float(np.median(known)) if known else 1.0
    factors = [fallback if d is None else rescale_for(d, diameter) for d in measured]
    return [s.rescaled(f) for s, f in zip(samples, factors)], factors


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

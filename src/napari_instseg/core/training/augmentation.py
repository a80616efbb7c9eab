"""Training augmentation of microscopy crops: scale jitter, flips and
rotations, intensity changes (gamma, contrast, noise, blur, inversion,
colour) and lost detail, on one annotated image at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..engine.normalize import apply_range

if TYPE_CHECKING:
    from .samples import AnnotatedImage


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
    return resampled(image, tuple(int(round(side * zoom)) for side in image.shape[:2]))


def resampled(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
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
    return resampled(small, image.shape[:2])


def _pad_to(image: np.ndarray, labels: np.ndarray, size: int):
    pad_y, pad_x = max(0, size - labels.shape[0]), max(0, size - labels.shape[1])
    if pad_y or pad_x:
        image = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)))
        labels = np.pad(labels, ((0, pad_y), (0, pad_x)))
    return image[:size, :size], labels[:size, :size]

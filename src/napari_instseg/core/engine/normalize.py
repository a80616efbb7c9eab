"""Robust intensity normalisation and channel handling.

Percentiles are estimated on a strided subsample, so a lazily loaded (dask,
zarr) slice is read only a few thousand pixels at a time rather than whole,
and tiles of one image share one normalisation (no seams in brightness).
"""

from __future__ import annotations

import numpy as np

from ..types import InputError

# Enough samples for stable 1st/99.8th percentiles while reading little.
_MAX_SAMPLES_PER_AXIS = 1024


def statistics_strides(height: int, width: int) -> tuple[int, int]:
    """Row and column steps that sample at most ~1024 x 1024 pixels of a slice."""
    return max(1, height // _MAX_SAMPLES_PER_AXIS), max(1, width // _MAX_SAMPLES_PER_AXIS)


def sample_for_statistics(image: np.ndarray) -> np.ndarray:
    """A strided view of a (Y, X, C) slice small enough to hold in memory."""
    step_y, step_x = statistics_strides(*image.shape[:2])
    return np.asarray(image[::step_y, ::step_x])


def percentile_range(
    image: np.ndarray, low: float = 1.0, high: float = 99.8
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) intensity percentiles of a (Y, X, C) slice.

    NaN and infinite pixels are ignored; an all-NaN channel maps to (0, 1).
    """
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, ignored
        sample = sample_for_statistics(image).astype(np.float32, copy=False)
    flat = sample.reshape(-1, sample.shape[-1])
    lows = np.zeros(flat.shape[1], np.float32)
    highs = np.ones(flat.shape[1], np.float32)
    for c in range(flat.shape[1]):
        finite = flat[:, c][np.isfinite(flat[:, c])]
        if finite.size:
            lows[c], highs[c] = np.percentile(finite, [low, high])
    return lows, highs


def apply_range(tile: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Map ``lows`` to 0 and ``highs`` to 1 (float32); NaN/inf become 0.

    A constant channel (high == low) becomes all zeros rather than dividing by 0.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        tile = np.asarray(tile, dtype=np.float32)
    span = range_span(lows, highs)
    with np.errstate(over="ignore", invalid="ignore"):
        out = (tile - lows) / span
    out[~np.isfinite(out)] = 0.0
    return out


def range_span(lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """``highs - lows`` as float32, infinite for a constant channel (so that
    dividing by it gives 0 instead of a division by zero)."""
    span = highs - lows
    return np.where(span > 1e-12, span, np.inf).astype(np.float32)


def as_model_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """Adapt a (Y, X, C) slice to the model's channel count (lazily if it can).

    Gray images feed every channel of an RGB model; RGBA drops alpha; a
    multichannel image with a count the model does not take is refused.
    """
    channels = image.shape[-1]
    if channels == in_channels:
        return image
    if channels == 1:
        return np.repeat(image, in_channels, axis=-1) if in_channels > 1 else image
    if channels == 4 and in_channels == 3:
        return image[..., :3]
    if in_channels == 1 and channels in (3, 4):
        return image[..., :3].mean(axis=-1, keepdims=True)
    raise InputError(
        f"the image has {channels} channels but the model takes {in_channels}; "
        "choose the channel axis or pass a single channel"
    )

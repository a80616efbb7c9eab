"""Reading images for the engine: axes, dtypes, lazy slice windows,
normalisation and the batches of tiles a network runs on.

The engine's convention for channels: a trailing axis of 3 or 4 is RGB(A)
unless ``channel_axis`` says otherwise; every other leading axis is a stack
axis (z, t, ...). ``data.AnnotatedImage`` and training follow the same rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from ..devices import inference_batch_size
from ..types import InputError
from .normalize import (
    apply_range,
    as_model_channels,
    percentile_range,
    range_span,
    statistics_strides,
)
from .tiling import Tile, fitted_tile_grid, window_tile_grid


class SliceReader:
    """Reads (Y, X, C) windows of one 2D slice of an nD array, lazily.

    Works for anything indexable like numpy (numpy, dask, zarr): only the
    requested window is read and converted.
    """

    def __init__(self, image, stack_index: tuple[int, ...], channel_axis: int | None):
        self.image = image
        self.stack_index = stack_index
        self.channel_axis = channel_axis
        spatial = [a for a in range(image.ndim) if a != channel_axis][-2:]
        self.height, self.width = (int(image.shape[a]) for a in spatial)
        self._spatial = spatial

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        index: list = []
        stack = iter(self.stack_index)
        for axis in range(self.image.ndim):
            if axis == self.channel_axis:
                index.append(slice(None))
            elif axis == self._spatial[0]:
                index.append(ys)
            elif axis == self._spatial[1]:
                index.append(xs)
            else:
                index.append(next(stack))
        window = np.asarray(self.image[tuple(index)])
        if self.channel_axis is None:
            return window[..., None]
        # after integer indexing, the channel axis is one of 3 remaining axes
        remaining = [
            a for a in range(self.image.ndim) if a == self.channel_axis or a in self._spatial
        ]
        return np.moveaxis(window, remaining.index(self.channel_axis), -1)

    def read_all(self) -> np.ndarray:
        return self.read(slice(None), slice(None))

    def strided(self) -> np.ndarray:
        """A subsample for intensity statistics, read without loading the slice."""
        sy, sx = statistics_strides(self.height, self.width)
        return self.read(slice(None, None, sy), slice(None, None, sx))


class ArrayReader(SliceReader):
    """A SliceReader over an in-memory (Y, X, C) array (used after rescaling)."""

    def __init__(self, array: np.ndarray):
        self.image = array
        self.height, self.width = array.shape[:2]

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        return self.image[ys, xs]


def resolve_axes(image, channel_axis: int | None) -> tuple[int | None, tuple[int, ...]]:
    """The channel axis (None if the image has none) and the stack shape.

    Without ``channel_axis``, a last axis of 3 or 4 on an image with 3 or more
    axes is taken as RGB(A), as napari does; every other leading axis is a
    stack axis (z, t, ...) processed slice by slice.
    """
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 2:
        raise InputError(f"an image needs at least 2 dimensions, got shape {shape}")
    if channel_axis is None and len(shape) >= 3 and shape[-1] in (3, 4):
        channel_axis = len(shape) - 1
    if channel_axis is not None:
        if not -len(shape) <= channel_axis < len(shape):
            raise InputError(f"channel axis {channel_axis} does not exist in shape {shape}")
        channel_axis %= len(shape)
        if len(shape) < 3:
            raise InputError("a channel axis needs an image with at least 3 dimensions")
    spatial_and_stack = [s for a, s in enumerate(shape) if a != channel_axis]
    if min(spatial_and_stack[-2:]) < 1:
        raise InputError(f"the image is empty (shape {shape})")
    return channel_axis, tuple(spatial_and_stack[:-2])


def channel_axis_beside(image_shape, labels_shape) -> int | None:
    """The channel axis of an annotated image: the one axis its 2D mask lacks
    (trailing first, as ``resolve_axes`` reads RGB), or None for a 2D image.
    Prediction cannot tell (3, H, W) channels from a stack of three without
    ``channel_axis``; with a mask beside the image, training can."""
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    if len(image_shape) == len(labels_shape):
        return None
    if len(image_shape) != len(labels_shape) + 1:
        raise InputError(f"an image of shape {image_shape} does not fit a mask of {labels_shape}")
    for axis in (len(image_shape) - 1, *range(len(image_shape) - 1)):
        if image_shape[:axis] + image_shape[axis + 1 :] == labels_shape:
            return axis
    raise InputError(f"an image of shape {image_shape} does not fit a mask of {labels_shape}")


def check_dtype(image) -> None:
    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise InputError(f"pixels of type {image.dtype} cannot be segmented (need numbers)")


def stack_indices(stack_shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    return np.ndindex(*stack_shape) if stack_shape else iter([()])


class NormalisedSlice:
    """One slice as the network sees it: percentile range from a strided
    sample of the whole slice (so every tile is normalised alike) unless
    ``intensity_range`` gives it, resized in memory when ``rescale`` != 1,
    with the model's channel count. ``part_of`` ((H, W), (y0, x0)) says the
    slice is that window of a larger image, to be tiled as that image is."""

    def __init__(
        self, reader: SliceReader, info, rescale: float = 1.0, intensity_range=None, part_of=None
    ):
        self.in_channels = info.in_channels
        if intensity_range is None:
            norm = info.normalization
            sample = as_model_channels(reader.strided(), self.in_channels)
            self.lows, self.highs = percentile_range(
                sample, norm.get("low", 1.0), norm.get("high", 99.8)
            )
        else:
            self.lows, self.highs = checked_intensity_range(intensity_range, self.in_channels)
        self.reader = reader if rescale == 1.0 else _resized(reader, self.in_channels, rescale)
        # tiles of the larger image mean nothing at another scale
        self.part_of = part_of if rescale == 1.0 else None

    @property
    def shape(self) -> tuple[int, int]:
        return self.reader.shape

    def tile_grid(self, tile_size: int, overlap: int) -> list[Tile]:
        """The tiles the engine runs on this slice."""
        if self.part_of is None:
            return fitted_tile_grid(*self.shape, tile_size, overlap)
        full_shape, origin = self.part_of
        return window_tile_grid(full_shape, origin, self.shape, tile_size, overlap)

    def tile(self, tile: Tile) -> np.ndarray:
        return self.window(slice(tile.y0, tile.y1), slice(tile.x0, tile.x1))

    def window(self, ys: slice, xs: slice) -> np.ndarray:
        """A normalised (H, W, C) float32 window with the model's channels."""
        raw = self.reader.read(ys, xs)
        return apply_range(as_model_channels(raw, self.in_channels), self.lows, self.highs)

    def batches(self, tiles: list[Tile], device: torch.device, normalised: bool = True):
        """(tiles, arrays) in batches for the device, each of one shape (edge
        tiles of a small image can differ): normalised (H, W, C) float32
        arrays, or with ``normalised=False`` float32 pixels as read, with one
        channel for a gray image (``on_device`` finishes them)."""
        size = inference_batch_size(device)
        for i in range(0, len(tiles), size):
            by_shape: dict[tuple, list] = {}
            for tile in tiles[i : i + size]:
                array = self.tile(tile) if normalised else self._raw_tile(tile)
                by_shape.setdefault(array.shape, []).append((tile, array))
            for group in by_shape.values():
                yield [t for t, _ in group], [a for _, a in group]

    def tensor_batches(self, tiles: list[Tile], device: torch.device, divisor: int):
        """(tiles, NCHW tensor on ``device`` padded to ``divisor``) batches.
        For a GPU the pixels travel as read (one channel for a gray image)
        and are normalised there: the same arithmetic, less host work."""
        on_gpu = device.type == "cuda"
        for batch_tiles, arrays in self.batches(tiles, device, normalised=not on_gpu):
            if on_gpu:
                yield batch_tiles, pad_to_divisor(self.on_device(arrays, device), divisor)
            else:
                yield batch_tiles, to_tensor(arrays, device, divisor)

    def _raw_tile(self, tile: Tile) -> np.ndarray:
        raw = self.reader.read(slice(tile.y0, tile.y1), slice(tile.x0, tile.x1))
        if not (raw.shape[-1] == 1 and self.in_channels > 1):
            raw = as_model_channels(raw, self.in_channels)
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, then 0
            return np.asarray(raw, dtype=np.float32)

    def on_device(self, raw_tiles: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """``apply_range`` of (H, W, C) float32 tiles on ``device``, as NCHW."""
        x = torch.from_numpy(np.stack(raw_tiles)).to(device)
        if x.shape[-1] != self.in_channels:  # a gray image feeds every channel
            x = x.expand(*x.shape[:-1], self.in_channels)
        lows, span = (
            torch.from_numpy(np.asarray(v, np.float32)).to(device)
            for v in (self.lows, range_span(self.lows, self.highs))
        )
        out = (x - lows) / span
        out = torch.where(torch.isfinite(out), out, torch.zeros((), device=device))
        return out.permute(0, 3, 1, 2)


def checked_intensity_range(intensity_range, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(lows, highs) float32 arrays of ``channels`` values from a (low, high)
    pair of numbers or of per-channel sequences."""
    try:
        low, high = intensity_range
        lows = np.broadcast_to(np.asarray(low, np.float32), (channels,)).copy()
        highs = np.broadcast_to(np.asarray(high, np.float32), (channels,)).copy()
    except (TypeError, ValueError):
        raise InputError(
            f"intensity range {intensity_range!r}: give (low, high), numbers or one per channel"
        ) from None
    if not (np.isfinite(lows).all() and np.isfinite(highs).all() and (highs > lows).all()):
        raise InputError(f"intensity range {intensity_range!r}: high must be above low")
    return lows, highs


def _resized(reader: SliceReader, in_channels: int, rescale: float) -> ArrayReader:
    if not 0.05 <= rescale <= 20:
        raise InputError(f"rescale factor {rescale} is outside 0.05..20")
    from skimage.transform import resize

    data = as_model_channels(reader.read_all(), in_channels).astype(np.float32)
    out_shape = (max(1, round(data.shape[0] * rescale)), max(1, round(data.shape[1] * rescale)))
    resized = resize(
        data, (*out_shape, data.shape[-1]), order=1, preserve_range=True, anti_aliasing=rescale < 1
    )
    return ArrayReader(resized.astype(np.float32))


def to_tensor(tiles: list[np.ndarray], device: torch.device, divisor: int) -> torch.Tensor:
    """Stack (H, W, C) tiles of one size into an NCHW tensor padded to ``divisor``."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2)))
    return pad_to_divisor(batch, divisor).to(device).contiguous(memory_format=torch.channels_last)


def pad_to_divisor(batch: torch.Tensor, divisor: int) -> torch.Tensor:
    """An NCHW batch padded at the bottom and right to multiples of ``divisor``
    (mirrored, or repeated where the tile is too small to mirror), channels last."""
    h, w = batch.shape[-2:]
    ph, pw = -h % divisor, -w % divisor
    if ph or pw:
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        batch = F.pad(batch, (0, pw, 0, ph), mode=mode)
    return batch.contiguous(memory_format=torch.channels_last)

"""The engine's options and their defaults, in one place: the API, the
engine, the CLI and the widgets all read them from here.

Options shared by ``segment_semantic`` and ``segment_instances`` (keyword only):

- ``device``: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:1", "mps".
- ``channel_axis``: the axis holding channels. Without it, a last axis of 3 or
  4 is RGB(A); every other leading axis is a stack (z, t, ...) done slice by slice.
- ``tile_size``: the largest tile side in pixels (default: the model's, 512 for
  the bundled models). A side up to 1.5 tiles runs whole; longer sides are cut
  into even tiles no longer than this.
- ``overlap``: pixels shared by neighbouring tiles (default ``default_overlap``).
- ``rescale``: resize factor applied before prediction; results come back at
  the input size.
- ``diameter``: the typical object diameter in pixels, or "auto" to measure
  it per slice from a first pass; the image is rescaled so that objects
  arrive at the size the model was trained at (``core.diameter``). Not with
  ``rescale``. The diameter and rescale used are in ``result.metadata``.
- ``augment``: test-time augmentation: average the network's output over the
  8 flips and 90 degree rotations of each tile (about 8x the network time).
- ``intensity_range``: (low, high), numbers or one per model channel: the
  input values mapped to 0 and 1 in every slice (default: each slice's own
  percentiles, the model's normalisation). Fixes brightness across the
  frames of a bleaching time-lapse, or across the blocks of one large image.
- ``part_of``: ((H, W), (y0, x0)): the image is the window at (y0, x0) of an
  image of shape (H, W) and is tiled with that image's tiles where they fit,
  so a block predicts as the whole image would there (``core.blockwise``).

- ``link``: None, "z" or "t": after slice-by-slice segmentation of a stack
  with one stack axis, join overlapping instances of adjacent slices into 3D
  objects ("z") or tracks ("t"), one id each (``core.linking``).
  ``link_threshold`` is the IoU that links two slices' objects (default
  ``linking.IOU_THRESHOLD``, 0.15); "t" also links centroids within half a
  diameter; both bridge one slice or frame where an object was missed.

Semantic only: ``min_size`` (smallest object in pixels, default the model's,
else ``MIN_SIZE``) and ``return_probabilities`` (default: kept up to
``MAX_PROBABILITY_PIXELS`` per call). Instance only: ``score_threshold`` and
``mask_threshold`` (default: the model's tuned values, else 0.5).

The draining functions also take ``progress(Progress)``, called per tile, and
``cancel()``, which stops the call with ``Cancelled`` when it returns True.
"""

from __future__ import annotations

from ..models.architectures import SEMANTIC
from ..types import InputError

SCORE_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
MIN_SIZE = 8
SEED_THRESHOLD = 0.5
# diameter="auto" rescales only objects outside this band around the trained
# diameter (as factors of it; the training crops were scaled by 0.7-1.5). On
# the gray val images a band up to 2.5x left x2 images 0.025 (U-Net) and
# 0.009 (Mask R-CNN) AP50 lower; widening the lower side to 1/1.8 moved
# nothing beyond 0.003. Rescaling stays within MIN/MAX_RESCALE.
AUTO_DIAMETER_BAND = (1 / 1.4, 1.4)
MIN_RESCALE, MAX_RESCALE = 0.25, 4.0
# Above this many pixels per call, class probabilities are not kept by default.
MAX_PROBABILITY_PIXELS = 4096 * 4096


def default_overlap(task: str, tile_size: int) -> int:
    """A quarter tile, so a detected object lies whole in the tile that owns
    it; class maps need only the U-Net's context (64 px suffice)."""
    return min(64, tile_size // 4) if task == SEMANTIC else tile_size // 4


def tiling(task: str, tile_size: int | None, overlap: int | None, model_tile: int):
    """Tile size and overlap with their defaults filled in, and checked."""
    tile_size = int(tile_size or model_tile)
    overlap = int(default_overlap(task, tile_size) if overlap is None else overlap)
    if tile_size < 32:
        raise InputError(f"tile size {tile_size} is too small (at least 32)")
    if not 0 <= overlap < tile_size // 2 + 1:
        raise InputError(f"overlap {overlap} must be between 0 and half the tile size")
    return tile_size, overlap


def detection_thresholds(score_threshold, mask_threshold, postprocess: dict):
    """Score and mask thresholds: the caller's, else the model's tuned ones
    (``postprocess``), else 0.5; checked."""
    if score_threshold is None:
        score_threshold = float(postprocess.get("score_threshold", SCORE_THRESHOLD))
    if mask_threshold is None:
        mask_threshold = float(postprocess.get("mask_threshold", MASK_THRESHOLD))
    # masks are probabilities strictly between 0 and 1: at 0 every box would be
    # painted whole, at 1 nothing would be painted
    if not 0 <= score_threshold <= 1:
        raise InputError(f"score threshold {score_threshold} must be between 0 and 1")
    if not 0 < mask_threshold < 1:
        raise InputError(f"mask threshold {mask_threshold} must be above 0 and below 1")
    return score_threshold, mask_threshold

"""The engine's options, defined once.

``SemanticOptions`` and ``InstanceOptions`` hold every keyword option of
``segment_semantic`` and ``segment_instances`` with its type, default and
meaning. The public functions take their signatures and docstrings from them
(``takes_options``), so ``help()`` and ``inspect.signature`` list every
option; the command line makes its flags from the same fields
(``commands/engine_flags.py``), and block-wise runs ask them what they refuse
(``blockwise_refusals``).

The functions that drain an engine also take ``progress(Progress)``, called
per tile, and ``cancel()``, which stops the call with ``Cancelled`` when it
returns True.
"""

from __future__ import annotations

import functools
import inspect
import textwrap
import typing
from dataclasses import dataclass, field, fields

from ..models.architectures import SEMANTIC
from ..types import InputError

SCORE_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
# diameter="auto" rescales only objects outside this band around the trained
# diameter (as factors of it; the training crops were scaled by 0.7-1.5). On
# the gray val images a band up to 2.5x left x2 images 0.025 (U-Net) and
# 0.009 (Mask R-CNN) AP50 lower; widening the lower side to 1/1.8 moved
# nothing beyond 0.003. Rescaling stays within MIN/MAX_RESCALE.
AUTO_DIAMETER_BAND = (1 / 1.4, 1.4)
MIN_RESCALE, MAX_RESCALE = 0.25, 4.0
# Above this many pixels per call, class probabilities are not kept by default.
MAX_PROBABILITY_PIXELS = 4096 * 4096
DEVICES = ("auto", "cpu", "cuda", "mps")  # the command line's choices; the API also takes "cuda:1"


def parse_diameter(value) -> float | str:
    """A diameter as the engine takes it: "auto", or a number of pixels (given
    as a number or as text, e.g. from the command line or a widget field)."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"object diameter {value!r} is not a number of pixels or 'auto'") from None
    if not 1 <= number <= 2000:
        raise InputError(f"object diameter {number:g} px is outside 1..2000")
    return number


def _option(default, help: str, *, flag: dict | None = None, blockwise: bool = True):
    """A field with its help text. ``flag``: the command line's argparse
    settings for ``--name`` (None: Python only). ``blockwise``: whether a
    block-wise run can take a value other than the default."""
    return field(default=default, metadata={"help": help, "flag": flag, "blockwise": blockwise})


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """The options both engines take."""

    device: str = _option(
        "auto",
        '"auto" (CUDA, then MPS, then the CPU), "cpu", "cuda", "cuda:1" or "mps".',
        flag={"choices": DEVICES},
    )
    channel_axis: int | None = _option(
        None,
        "The axis holding channels. Without it, a last axis of 3 or 4 is RGB(A); every "
        "other leading axis is a stack (z, t, ...) segmented slice by slice.",
        flag={
            "type": int,
            "help": "axis of channels in a multichannel image (RGB is found itself)",
        },
        blockwise=False,
    )
    tile_size: int | None = _option(
        None,
        "The largest tile side in pixels (default: the model's, 512 for the bundled models). "
        "A side up to 1.5 tiles runs whole; longer sides are cut into even tiles.",
        flag={"type": int},
    )
    overlap: int | None = _option(
        None,
        "Pixels shared by neighbouring tiles (default: a quarter tile for detections, "
        "64 px of context for class maps).",
        flag={"type": int},
    )
    rescale: float = _option(
        1.0,
        "Resize factor applied before prediction; results come back at the input size. "
        "Not with ``diameter``.",
        blockwise=False,
    )
    diameter: float | str | None = _option(
        None,
        'The typical object diameter in pixels, or "auto" to measure it per slice from a '
        "first pass; the image is rescaled so that objects arrive at the size the model "
        "was trained at. The diameter and rescale used are in ``result.metadata``.",
        flag={
            "type": parse_diameter,
            "metavar": "PX|auto",
            "help": "typical object diameter in pixels, or 'auto' to measure it per image; "
            "images are rescaled to the model's trained object size (default: as they are)",
        },
        blockwise=False,
    )
    augment: bool = _option(
        False,
        "Test-time augmentation: average the network's output over the 8 flips and 90 "
        "degree rotations of each tile (about 8x the network time).",
        flag={
            "action": "store_true",
            "help": "test-time augmentation: average over flips and rotations (about 8x slower)",
        },
    )
    link: str | None = _option(
        None,
        'None, "z" or "t": after slice-by-slice segmentation of a stack with one stack axis, '
        'join overlapping instances of adjacent slices into 3D objects ("z") or tracks '
        '("t"), one id each; both bridge one slice or frame where an object was missed.',
        flag={
            "choices": ["z", "t"],
            "help": "join a stack's slices: one id per 3D object (z) or per track (t); "
            "writes STEM_objects.csv, and STEM_tracks.csv for t",
        },
        blockwise=False,
    )
    link_threshold: float | None = _option(
        None,
        'The IoU that links two slices\' objects (default 0.15); tracks ("t") also link '
        "centroids within half a diameter.",
        flag={"type": float, "help": "IoU of two slices' objects that links them (default: 0.15)"},
    )
    intensity_range: tuple | None = _option(
        None,
        "(low, high), numbers or one per model channel: the input values mapped to 0 and 1 "
        "in every slice (default: each slice's own percentiles, the model's normalisation). "
        "Fixes brightness across the frames of a bleaching time-lapse.",
    )
    part_of: tuple | None = _option(
        None,
        "((H, W), (y0, x0)): the image is the window at (y0, x0) of an image of shape "
        "(H, W) and is tiled with that image's tiles where they fit, so a block predicts "
        "as the whole image would there (block-wise runs set it).",
    )

    def keywords(self) -> dict:
        """The options as keyword arguments (the values, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def select(cls, mapping: dict) -> dict:
        """The entries of ``mapping`` that are options of ``cls``."""
        names = {f.name for f in fields(cls)}
        return {k: v for k, v in mapping.items() if k in names}


@dataclass(frozen=True, kw_only=True)
class SemanticOptions(EngineOptions):
    """The options of ``segment_semantic`` (U-Nets)."""

    min_size: int | None = _option(
        None,
        "The smallest object in pixels (default: the model's, else 8).",
        flag={"type": int, "help": "U-Net: smallest object in pixels (default: the model's)"},
    )
    return_probabilities: bool | None = _option(
        None,
        "Keep the class probabilities in the result (default: up to 4096 x 4096 pixels per call).",
    )


@dataclass(frozen=True, kw_only=True)
class InstanceOptions(EngineOptions):
    """The options of ``segment_instances`` (Mask R-CNNs)."""

    score_threshold: float | None = _option(
        None,
        "Detections scoring below it are dropped (default: the model's tuned value, else 0.5).",
        flag={
            "type": float,
            "help": "Mask R-CNN detections to keep (default: the model's own, else 0.5)",
        },
    )
    mask_threshold: float | None = _option(
        None,
        "Mask probability counted as inside an object (default: the model's tuned value, "
        "else 0.5): lower grows objects, higher shrinks them.",
        flag={
            "type": float,
            "help": "Mask R-CNN mask probability counted as inside (default: the model's own, "
            "else 0.5)",
        },
    )


@dataclass(frozen=True, kw_only=True)
class AnyModelOptions(InstanceOptions, SemanticOptions):
    """Both engines' options, for callers that take any model (``segment``,
    the command line, block-wise runs): each engine keeps its own."""


def blockwise_refusals(options: dict) -> list[str]:
    """The options in ``options`` that a block-wise run cannot take (those
    that change the image's scale or axes), as given."""
    return [
        f.name
        for f in fields(AnyModelOptions)
        if not f.metadata["blockwise"] and options.get(f.name, f.default) != f.default
    ]


def takes_options(options_class: type[EngineOptions]):
    """Give ``func(image, model, *, options, ...)`` the fields of
    ``options_class`` as keyword-only parameters: the caller passes them one
    by one, ``func`` receives them checked in one ``options_class``, and the
    signature and docstring list each with its type, default and meaning."""
    hints = typing.get_type_hints(options_class)
    option_parameters = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name]
        )
        for f in fields(options_class)
    ]
    names = {p.name for p in option_parameters}
    option_docs = "\n".join(
        textwrap.fill(
            f"{f.name}: {f.metadata['help']}",
            width=88,
            initial_indent="    ",
            subsequent_indent="        ",
        )
        for f in fields(options_class)
    )

    def decorate(func):
        try:  # the types themselves, not their names, for help() and IDEs
            signature = inspect.signature(func, eval_str=True)
        except NameError:
            signature = inspect.signature(func)
        own = [p for p in signature.parameters.values() if p.name != "options"]
        positional = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keyword = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]

        @functools.wraps(func)
        def with_options(*args, **kwargs):
            chosen = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            return func(*args, options=options_class(**chosen), **kwargs)

        with_options.__signature__ = signature.replace(
            parameters=[*positional, *option_parameters, *keyword]
        )
        with_options.options_class = options_class  # for docs/api.md
        with_options.__doc__ = (
            f"{inspect.cleandoc(func.__doc__ or '')}\n\nOptions:\n{option_docs}\n"
        )
        return with_options

    return decorate


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

"""The semantic engine: class maps of any image with a U-Net-like model, and
instances derived from them.

``iter_segment_semantic`` yields a ``Progress`` per tile and returns a
``SemanticResult``; tiles are blended row band by row band, so only one band
of class probabilities is held unless they are asked for.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..devices import configure_cpu_threads
from ..labels import device_instances
from ..labels.linking import check_link, link_stack
from ..labels.postprocess import (
    instance_result_from_labels,
    instances_from_classes,
    relabel_sequential,
    resize_labels,
    stack_instances,
)
from ..models.architectures import SEMANTIC
from ..models.loaded import LoadedModel
from ..models.loading import load_model
from ..types import Progress, SemanticResult
from . import options
from .blending import BandBlender, blending_device
from .diameter import SlicePlan
from .memory import TileCounter, with_memory_fallback
from .reading import NormalisedSlice, SliceReader, check_dtype, resolve_axes, stack_indices
from .test_time_augmentation import augmented_probabilities
from .tiling import Tile

MIN_MEASURED_SIZE = 4  # pixels: smaller specks say nothing about object size


def iter_segment_semantic(
    image,
    model="nuclei-unet",
    *,
    device: str = "auto",
    channel_axis: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    rescale: float = 1.0,
    diameter: float | str | None = None,
    augment: bool = False,
    min_size: int | None = None,
    return_probabilities: bool | None = None,
    link: str | None = None,
    link_threshold: float | None = None,
    intensity_range: tuple | None = None,
    part_of: tuple | None = None,
) -> Generator[Progress, None, SemanticResult]:
    """Generator form of ``segment_semantic`` (options: ``core.options``)."""
    loaded = load_model(model, device)
    loaded.check_task(SEMANTIC)
    check_dtype(image)
    configure_cpu_threads()
    channel_axis, stack_shape = resolve_axes(image, channel_axis)
    link = check_link(link, stack_shape)
    tile_size, overlap = options.tiling(SEMANTIC, tile_size, overlap, loaded.info.tile_size)
    sizing = SlicePlan(loaded, diameter, rescale)
    rules = instance_rules(loaded.info, min_size)
    settings = _Settings(
        loaded,
        tile_size,
        overlap,
        min_size=rules["min_size"],
        interior=rules["interior_class"],
        boundary=rules["boundary_class"],
        seed_threshold=rules["seed_threshold"],
        augment=augment,
        return_probabilities=return_probabilities,
        intensity_range=intensity_range,
        part_of=part_of,
    )
    indices = list(stack_indices(stack_shape))
    counter = TileCounter()
    auto = sizing.diameter == "auto"
    outputs, spatial = [], None
    for index in indices:
        reader = SliceReader(image, index, channel_axis)
        spatial = reader.shape

        def run(scale, again, reader=reader):
            return _segment_slice(
                settings, reader, scale, len(indices), counter, again, measure=auto and not again
            )

        output = yield from sizing.passes(run, lambda output: output.measured)
        outputs.append(output)
    result = _assemble(outputs, stack_shape, spatial, loaded)
    result.instances.metadata.update(sizing.report(stack_shape))
    if link:
        result.instances = link_stack(result.instances, link, threshold=link_threshold, copy=False)
    return result


def instance_rules(info, min_size: int | None = None) -> dict:
    """How a U-Net's class map becomes instances: the keywords of
    ``instances_from_classes`` from the settings stored with the model."""
    post, names = info.postprocess, info.class_names
    return {
        "min_size": int(post.get("min_size", options.MIN_SIZE) if min_size is None else min_size),
        "interior_class": names.index(post.get("instance_class", names[1])),
        "boundary_class": names.index("boundary") if "boundary" in names else -1,
        "seed_threshold": float(post.get("seed_threshold", options.SEED_THRESHOLD)),
    }


@dataclass(frozen=True)
class _Settings:
    loaded: LoadedModel
    tile_size: int
    overlap: int
    min_size: int
    interior: int  # class index of object interiors
    boundary: int  # class index of boundaries (-1: none)
    seed_threshold: float
    augment: bool
    return_probabilities: bool | None
    intensity_range: tuple | None = None
    part_of: tuple | None = None


@dataclass
class _SliceOutput:
    """One slice's class map, probabilities, labels and per-object table."""

    classes: np.ndarray
    probabilities: np.ndarray | None
    labels: np.ndarray
    measured: np.ndarray  # labels to measure object size on (diameter="auto")
    instance_probability: np.ndarray | None = None  # uint8, x 255: scores come from it
    boxes: np.ndarray | None = None
    areas: np.ndarray | None = None
    scores: np.ndarray | None = None


def _segment_slice(
    settings: _Settings,
    reader: SliceReader,
    scale: float,
    slices: int,
    counter: TileCounter,
    again: bool = False,
    measure: bool = False,
) -> Generator:
    """The ``_SliceOutput`` of one slice predicted at ``scale``, at the slice's own size."""
    loaded, tile_size, overlap = settings.loaded, settings.tile_size, settings.overlap
    work = NormalisedSlice(reader, loaded.info, scale, settings.intensity_range, settings.part_of)
    tiles = len(work.tile_grid(tile_size, overlap))
    counter.add(tiles) if again else counter.announce(tiles * slices)
    height, width = reader.shape
    keep = settings.return_probabilities
    if keep is None:
        keep = height * width * slices <= options.MAX_PROBABILITY_PIXELS
    keep = keep and scale == 1.0  # probabilities at a rescaled size would not fit the image

    def run_slice(model, tile, overlap):
        return _class_maps(work, model, tile, overlap, keep, settings.interior, settings.augment)

    steps = with_memory_fallback(run_slice, loaded, tile_size, overlap, work.tile_grid)
    blended = yield from counter.run(steps, "predicting tiles")
    rules = dict(
        interior_class=settings.interior,
        boundary_class=settings.boundary,
        seed_threshold=settings.seed_threshold,
    )
    if device_instances.fits_on(blended.device, height * width) and scale == 1.0:
        try:
            return _instances_on_device(blended, settings.min_size, rules, measure)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()  # the CPU takes over below
    classes = blended.classes.cpu().numpy()
    interior_probability = blended.instance_probability.cpu().numpy()

    def instances(min_size: int) -> np.ndarray:
        # at the size the network saw, where the post-processing was tuned
        labels = instances_from_classes(
            classes, min_size, seed_probability=interior_probability, **rules
        )
        return labels if scale == 1.0 else relabel_sequential(resize_labels(labels, reader.shape))

    labels = instances(settings.min_size)
    # a first pass measures objects the minimum size would drop: those too
    # small are what diameter="auto" must find to enlarge them
    measured = instances(MIN_MEASURED_SIZE) if measure else labels
    if scale != 1.0:
        classes = resize_labels(classes, reader.shape)
        interior_probability = resize_labels(interior_probability, reader.shape)
    return _SliceOutput(classes, blended.probabilities, labels, measured, interior_probability)


def _instances_on_device(blended: BandBlender, min_size: int, rules: dict, measure: bool):
    """Labels and their table made on the GPU that blended the tiles; only
    the class map and the labels travel to the host."""
    classes, probability = blended.classes, blended.instance_probability

    def instances(size: int):
        return device_instances.instances_from_classes(
            classes, size, seed_probability=probability, **rules
        )

    labels = instances(min_size)
    boxes, areas, scores = device_instances.object_statistics(labels, probability)
    measured = instances(MIN_MEASURED_SIZE).cpu().numpy() if measure else None
    labels = labels.cpu().numpy()
    return _SliceOutput(
        classes.cpu().numpy(),
        blended.probabilities,
        labels,
        labels if measured is None else measured,
        boxes=boxes,
        areas=areas,
        scores=scores,
    )


def _mean_probabilities(probability: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each instance's mean interior probability (0..1), its score."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0)
    return ndimage.mean(probability, labels, np.arange(1, n + 1)) / 255.0


def _class_maps(
    work: NormalisedSlice,
    loaded: LoadedModel,
    tile_size: int,
    overlap: int,
    keep_probabilities: bool,
    instance_class: int,
    augment: bool = False,
) -> Generator[None, None, BandBlender]:
    """The blended class map, the instance class's probability (uint8, x 255)
    and optional probabilities of one slice, yielding once per tile."""
    divisor = getattr(loaded.predictor, "size_divisor", 16)
    height, width = work.shape
    blender = BandBlender(
        (height, width),
        len(loaded.info.class_names),
        max(1, overlap // 2),
        instance_class,
        blending_device(loaded.device),
        keep_probabilities,
    )
    rows: dict[int, list[Tile]] = {}
    for tile in work.tile_grid(tile_size, overlap):
        rows.setdefault(tile.row, []).append(tile)
    row_starts = [rows[r][0].y0 for r in sorted(rows)] + [height]
    for r in sorted(rows):
        for batch_tiles, x in work.tensor_batches(rows[r], loaded.device, divisor):
            probs = augmented_probabilities(loaded, x) if augment else loaded.predict_tiles(x)
            for k, tile in enumerate(batch_tiles):
                blender.add(tile, probs[k])
                yield
        # rows before the next tile row are final
        blender.close_rows(row_starts[r + 1] if r + 1 < len(row_starts) - 1 else height)
    return blender


def _assemble(outputs: list[_SliceOutput], stack_shape, spatial, loaded) -> SemanticResult:
    """One SemanticResult from the slices' class maps and labels; an
    instance's score is its mean interior probability."""
    instance_class = loaded.info.postprocess.get("instance_class", loaded.info.class_names[1])
    class_names = ["background", instance_class]
    results = []
    for output in outputs:
        scores = output.scores
        if scores is None:
            scores = _mean_probabilities(output.instance_probability, output.labels)
        result = instance_result_from_labels(
            output.labels, class_names, scores=scores, boxes=output.boxes
        )
        result.areas = output.areas
        results.append(result)
        # a long stack is not held twice
        output.labels = output.measured = output.instance_probability = None
    instances = stack_instances(results, stack_shape, spatial, class_names)
    classes = np.stack([o.classes for o in outputs]).reshape(*stack_shape, *spatial)
    probs = None
    if all(o.probabilities is not None for o in outputs):
        probs = np.stack([o.probabilities for o in outputs], axis=1)
        probs = probs.reshape(probs.shape[0], *stack_shape, *spatial)
    return SemanticResult(classes, list(loaded.info.class_names), instances, probs)

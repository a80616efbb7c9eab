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

from ..devices import configure_cpu_threads
from ..labels import device_instances
from ..labels.linking import check_link, link_stack
from ..labels.postprocess import (
    id_counts,
    instance_result_from_labels,
    instances_from_classes,
    relabel_sequential,
    resize_labels,
    stack_instances,
)
from ..models.architectures import SEMANTIC
from ..models.info import InstanceRule
from ..models.loaded import LoadedModel
from ..models.loading import load_model
from ..types import Progress, SemanticResult
from .blending import BandBlender, blending_device
from .diameter import SlicePlan
from .memory import TileCounter, with_memory_fallback
from .options import MAX_PROBABILITY_PIXELS, SemanticOptions, takes_options, tiling
from .reading import NormalisedSlice, SliceReader, check_dtype, resolve_axes, stack_indices
from .test_time_augmentation import augmented_probabilities
from .tiling import Tile

MIN_MEASURED_SIZE = 4  # pixels: smaller specks say nothing about object size


@takes_options(SemanticOptions)
def iter_segment_semantic(
    image, model="nuclei-unet", *, options: SemanticOptions
) -> Generator[Progress, None, SemanticResult]:
    """Generator form of ``segment_semantic``: yields a ``Progress`` per
    tile and returns the ``SemanticResult``, for a worker thread that shows
    progress and cancels between tiles."""
    loaded = load_model(model, options.device)
    loaded.check_task(SEMANTIC)
    check_dtype(image)
    configure_cpu_threads()
    channel_axis, stack_shape = resolve_axes(image, options.channel_axis)
    link = check_link(options.link, stack_shape)
    tile_size, overlap = tiling(SEMANTIC, options.tile_size, options.overlap, loaded.info.tile_size)
    sizing = SlicePlan(loaded, options.diameter, options.rescale, options.part_of is None)
    settings = _Settings(
        loaded,
        tile_size,
        overlap,
        rule=loaded.info.instance_rule(options.min_size),
        augment=options.augment,
        return_probabilities=options.return_probabilities,
        intensity_range=options.intensity_range,
        part_of=options.part_of,
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
        result.instances = link_stack(
            result.instances, link, threshold=options.link_threshold, copy=False
        )
    return result


@dataclass(frozen=True)
class _Settings:
    loaded: LoadedModel
    tile_size: int
    overlap: int
    rule: InstanceRule
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
        keep = height * width * slices <= MAX_PROBABILITY_PIXELS
    keep = keep and scale == 1.0  # probabilities at a rescaled size would not fit the image

    def run_slice(model, tile, overlap):
        return _class_maps(
            work, model, tile, overlap, keep, settings.rule.interior_class, settings.augment
        )

    steps = with_memory_fallback(run_slice, loaded, tile_size, overlap, work.tile_grid)
    blended = yield from counter.run(steps, "predicting tiles")
    rules = settings.rule.keywords()
    if device_instances.fits_on(blended.device, height * width) and scale == 1.0:
        try:
            return _instances_on_device(blended, settings.rule.min_size, rules, measure)
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

    labels = instances(settings.rule.min_size)
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
    """Each instance's mean interior probability (0..1), its score. Summed
    band by band (``id_counts``): ``ndimage.mean`` over a whole 8192 x 8192
    slice made float64 copies of both images (1.0 GiB, the run's peak)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0)
    sums, counts = id_counts(labels, probability), id_counts(labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[1:] / counts[1:] / 255.0


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
    class_names = loaded.info.result_class_names
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

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
from scipy import ndimage

from . import options
from .augmentation import augmented_probabilities
from .devices import configure_cpu_threads
from .diameter import SlicePlan
from .linking import check_link, link_stack
from .memory import TileCounter, with_memory_fallback
from .models.architectures import SEMANTIC
from .models.loading import LoadedModel, load_model
from .postprocess import (
    instance_result_from_labels,
    instances_from_classes,
    relabel_sequential,
    resize_labels,
    stack_instances,
)
from .reading import (
    NormalisedSlice,
    SliceReader,
    check_dtype,
    resolve_axes,
    stack_indices,
    to_tensor,
)
from .tiling import Tile, blend_window
from .types import Progress, SemanticResult

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

        output = yield from sizing.passes(run, lambda output: output[4])
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


def _segment_slice(
    settings: _Settings,
    reader: SliceReader,
    scale: float,
    slices: int,
    counter: TileCounter,
    again: bool = False,
    measure: bool = False,
):
    """(classes, interior probability, probabilities, labels, labels to
    measure) of one slice predicted at ``scale``, at the slice's own size."""
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
    classes, interior_probability, probs = yield from counter.run(steps, "predicting tiles")

    def instances(min_size: int) -> np.ndarray:
        # at the size the network saw, where the post-processing was tuned
        labels = instances_from_classes(
            classes,
            min_size,
            interior_class=settings.interior,
            boundary_class=settings.boundary,
            seed_probability=interior_probability,
            seed_threshold=settings.seed_threshold,
        )
        return labels if scale == 1.0 else relabel_sequential(resize_labels(labels, reader.shape))

    labels = instances(settings.min_size)
    # a first pass measures objects the minimum size would drop: those too
    # small are what diameter="auto" must find to enlarge them
    measured = instances(MIN_MEASURED_SIZE) if measure else labels
    if scale != 1.0:
        classes = resize_labels(classes, reader.shape)
        interior_probability = resize_labels(interior_probability, reader.shape)
    return classes, interior_probability, probs, labels, measured


def _class_maps(
    work: NormalisedSlice,
    loaded: LoadedModel,
    tile_size: int,
    overlap: int,
    keep_probabilities: bool,
    instance_class: int,
    augment: bool = False,
) -> Generator[None, None, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Class map, the instance class's probability (uint8, x 255) and optional
    probabilities of one slice, yielding once per tile."""
    divisor = getattr(loaded.predictor, "size_divisor", 16)
    height, width = work.shape
    n_classes = len(loaded.info.class_names)
    ramp = max(1, overlap // 2)
    classes = np.zeros((height, width), np.uint8)
    instance_probability = np.zeros((height, width), np.uint8)
    probabilities = np.zeros((n_classes, height, width), np.float32) if keep_probabilities else None

    rows: dict[int, list[Tile]] = {}
    for tile in work.tile_grid(tile_size, overlap):
        rows.setdefault(tile.row, []).append(tile)
    row_starts = [rows[r][0].y0 for r in sorted(rows)] + [height]
    band_start = 0
    band_acc = np.zeros((n_classes, 0, width), np.float32)
    band_weight = np.zeros((0, width), np.float32)
    for r in sorted(rows):
        row_tiles = rows[r]
        # extend the band to cover this row's tiles
        grow = row_tiles[0].y1 - (band_start + band_acc.shape[1])
        if grow > 0:
            band_acc = np.concatenate([band_acc, np.zeros((n_classes, grow, width), np.float32)], 1)
            band_weight = np.concatenate([band_weight, np.zeros((grow, width), np.float32)], 0)
        for batch_tiles, arrays in work.batches(row_tiles, loaded.device):
            x = to_tensor(arrays, loaded.device, divisor)
            probs = augmented_probabilities(loaded, x) if augment else loaded.predict_tiles(x)
            probs = probs.float().cpu().numpy()
            for k, t in enumerate(batch_tiles):
                th, tw = t.y1 - t.y0, t.x1 - t.x0
                weight = np.outer(blend_window(th, ramp), blend_window(tw, ramp))
                sl = (slice(t.y0 - band_start, t.y1 - band_start), slice(t.x0, t.x1))
                band_acc[(slice(None), *sl)] += probs[k, :, :th, :tw] * weight
                band_weight[sl] += weight
                yield
        # rows before the next tile row are final
        final_end = row_starts[r + 1] if r + 1 < len(row_starts) - 1 else height
        n_final = final_end - band_start
        blended = band_acc[:, :n_final] / np.maximum(band_weight[:n_final], 1e-6)
        classes[band_start:final_end] = blended.argmax(0)
        instance_probability[band_start:final_end] = np.round(blended[instance_class] * 255).astype(
            np.uint8
        )
        if probabilities is not None:
            probabilities[:, band_start:final_end] = blended
        band_acc = band_acc[:, n_final:]
        band_weight = band_weight[n_final:]
        band_start = final_end
    return classes, instance_probability, probabilities


def _assemble(outputs, stack_shape, spatial, loaded) -> SemanticResult:
    """One SemanticResult from the slices' class maps and labels; an
    instance's score is its mean interior probability."""
    instance_class = loaded.info.postprocess.get("instance_class", loaded.info.class_names[1])
    class_names = ["background", instance_class]
    results = []
    for i, (classes, interior_probability, probs, labels, _) in enumerate(outputs):
        n = int(labels.max()) if labels.size else 0
        scores = (
            ndimage.mean(interior_probability, labels, np.arange(1, n + 1)) / 255.0
            if n
            else np.zeros(0)
        )
        results.append(instance_result_from_labels(labels, class_names, scores=scores))
        outputs[i] = (classes, None, probs, None, None)  # a long stack is not held twice
    instances = stack_instances(results, stack_shape, spatial, class_names)
    classes = np.stack([o[0] for o in outputs]).reshape(*stack_shape, *spatial)
    probs = None
    if all(o[2] is not None for o in outputs):
        probs = np.stack([o[2] for o in outputs], axis=1)
        probs = probs.reshape(probs.shape[0], *stack_shape, *spatial)
    return SemanticResult(classes, list(loaded.info.class_names), instances, probs)

"""The instance engine: detections of any image with a Mask R-CNN-like model,
painted into a label image slice by slice.

``detect_instances`` returns one slice's ``Detections`` before painting;
``iter_segment_instances`` yields a ``Progress`` per tile and returns an
``InstanceResult`` for 2D images and stacks alike.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch

from ..devices import configure_cpu_threads
from ..draining import drain
from ..labels.detections import Detections
from ..labels.linking import check_link, link_stack
from ..labels.postprocess import resize_instances, stack_instances
from ..models.architectures import INSTANCE
from ..models.loaded import LoadedModel
from ..models.loading import load_model
from ..types import InputError, InstanceResult, Progress
from .diameter import SlicePlan
from .memory import TileCounter, with_memory_fallback
from .options import InstanceOptions, detection_thresholds, takes_options, tiling
from .reading import NormalisedSlice, SliceReader, check_dtype, resolve_axes, stack_indices
from .test_time_augmentation import augmented_detections


@takes_options(InstanceOptions)
def iter_segment_instances(
    image, model="nuclei-maskrcnn", *, options: InstanceOptions
) -> Generator[Progress, None, InstanceResult]:
    """Generator form of ``segment_instances``: yields a ``Progress`` per
    tile and returns the ``InstanceResult``, for a worker thread that shows
    progress and cancels between tiles."""
    loaded, settings = _prepare(image, model, options)
    _, mask_threshold = detection_thresholds(
        options.score_threshold, options.mask_threshold, loaded.info.postprocess
    )
    sizing = SlicePlan(loaded, options.diameter, options.rescale, options.part_of is None)
    intensity_range, part_of = options.intensity_range, options.part_of
    channel_axis, stack_shape = resolve_axes(image, options.channel_axis)
    link = check_link(options.link, stack_shape)
    indices = list(stack_indices(stack_shape))
    counter = TileCounter()
    results, spatial = [], None
    for index in indices:
        reader = SliceReader(image, index, channel_axis)
        spatial = reader.shape

        def run(scale, again, reader=reader):
            work = NormalisedSlice(reader, loaded.info, scale, intensity_range, part_of)
            detections = yield from _detect_in_slice(
                work, loaded, *settings, counter, len(indices), again
            )
            # painted slice by slice: a stack's raw masks are never all held at once
            result = detections.paint(mask_threshold, loaded.device)
            return result if scale == 1.0 else resize_instances(result, reader.shape)

        results.append((yield from sizing.passes(run, lambda result: result.labels)))
    result = stack_instances(results, stack_shape, spatial, list(loaded.info.class_names))
    result.metadata.update(sizing.report(stack_shape))
    if link:
        result = link_stack(result, link, threshold=options.link_threshold, copy=False)
    return result


@takes_options(InstanceOptions)
def detect_instances(image, model="nuclei-maskrcnn", *, options: InstanceOptions) -> Detections:
    """Detections of one 2D image before painting, so that several mask
    thresholds can be tried on one run of the network (``Detections.paint``).
    ``segment_instances`` is this plus painting, for any image; the options
    that rescale, link or paint are refused here."""
    refused = [
        name
        for name in ("rescale", "diameter", "link", "mask_threshold", "intensity_range", "part_of")
        if getattr(options, name) != InstanceOptions.__dataclass_fields__[name].default
    ]
    if refused:
        raise InputError(f"detect_instances does not take {', '.join(refused)}")
    loaded, settings = _prepare(image, model, options)
    channel_axis, stack_shape = resolve_axes(image, options.channel_axis)
    if stack_shape:
        raise InputError(f"detect_instances takes one 2D image, not a stack {stack_shape}")
    work = NormalisedSlice(SliceReader(image, (), channel_axis), loaded.info)
    return drain(_detect_in_slice(work, loaded, *settings, TileCounter(), slices=1))


def _prepare(image, model, options: InstanceOptions):
    """The loaded model and (tile size, overlap, score threshold, augment), checked."""
    loaded = load_model(model, options.device)
    loaded.check_task(INSTANCE)
    post = loaded.info.postprocess
    score_threshold, _ = detection_thresholds(options.score_threshold, None, post)
    tile_size, overlap = tiling(INSTANCE, options.tile_size, options.overlap, loaded.info.tile_size)
    check_dtype(image)
    configure_cpu_threads()
    return loaded, (tile_size, overlap, score_threshold, options.augment)


def _detect_in_slice(
    work: NormalisedSlice,
    loaded: LoadedModel,
    tile_size: int,
    overlap: int,
    score_threshold: float,
    augment: bool,
    counter: TileCounter,
    slices: int,
    again: bool = False,
) -> Generator[Progress, None, Detections]:
    """Detections of one slice (at the rescaled size), tile by tile."""
    tiles = len(work.tile_grid(tile_size, overlap))
    counter.add(tiles) if again else counter.announce(tiles * slices)

    def run_slice(model, tile, overlap):
        return _detections(work, model, tile, overlap, score_threshold, augment)

    steps = with_memory_fallback(run_slice, loaded, tile_size, overlap, work.tile_grid)
    return (yield from counter.run(steps, "detecting in tiles"))


def _detections(
    work: NormalisedSlice,
    loaded: LoadedModel,
    tile_size: int,
    overlap: int,
    score_threshold: float,
    augment: bool = False,
) -> Generator[None, None, Detections]:
    height, width = work.shape
    tiles = work.tile_grid(tile_size, overlap)
    boxes, scores, classes, masks = [], [], [], []
    for batch_tiles, x in work.tensor_batches(tiles, loaded.device, 1):
        with torch.inference_mode():  # the predictor picks the precision of each stage
            sizes = [(t.y1 - t.y0, t.x1 - t.x0) for t in batch_tiles]
            if augment:
                found = augmented_detections(loaded, x, sizes, score_threshold)
            else:
                found = loaded.predict_tiles(x, sizes, score_threshold)
        for det, t in zip(found, batch_tiles):
            scores_all = det["scores"].float().cpu().numpy()
            keep = scores_all >= score_threshold
            # torchvision's x0, y0, x1, y1 in the tile -> y_min, x_min, y_max, x_max in the slice
            b = det["boxes"].float().cpu().numpy()[keep][:, [1, 0, 3, 2]]
            b = b + np.array([t.y0, t.x0, t.y0, t.x0])
            cy, cx = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            # keep each object only from the tile that owns its centre, where it
            # is most interior; seams are mid-overlap, so it is seen whole there
            owned = (cy >= t.own_y[0]) & (cy < t.own_y[1]) & (cx >= t.own_x[0]) & (cx < t.own_x[1])
            boxes.append(b[owned])
            scores.append(scores_all[keep][owned])
            classes.append(det["labels"].cpu().numpy()[keep][owned])
            masks.append(det["masks"].float().cpu().numpy()[keep][owned][:, 0])
            yield
    return Detections(
        (height, width),
        np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(classes) if classes else np.zeros(0, np.int64),
        np.concatenate(masks) if masks else np.zeros((0, 28, 28)),
        tuple(loaded.info.class_names),
    )

"""Block-wise segmentation of one large 2D image, in this process or on a
dask.distributed cluster.

The image is cut into blocks; each is segmented with a halo of context
around it (by the ordinary engine, tiles and all). A block keeps the objects
whose centre lies in its core, whole, halo included: with a halo wider than
the largest object, each object is kept by exactly the one block that sees
it whole (the engine's own rule for tiles, one level up). Blocks return their
objects as small crops, painted into one label image by
``core.blockwise.painting`` (highest score first, onto background only, region
by region, so the label image can be a zarr array on disk). Ids are global.

So that blocks predict as the whole image would, every block is normalised
with the whole image's intensity range and its window is widened to whole
tiles of the whole image's tile grid, which it is then tiled with
(``part_of``): the same tiles, the same network outputs, the same blends.

Tasks are pure functions of (image source, block, model, options): dask
retries a block whose worker died, and the result does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..draining import drain
from ..engine.tiling import aligned_span
from ..labels.postprocess import smallest_label_dtype
from ..types import InputError, InstanceResult, Progress
from .painting import BlockObject, iter_paint_regions, keep_objects

DEFAULT_BLOCK = 2048  # a block side for in-process runs (``choose_block_size`` for clusters)
# Block sides a cluster run chooses from. Each block's read window is widened
# to whole tiles of the image's tile grid (so blocks give the single process's
# result exactly), which costs about a tile a side: 2048 px blocks read 1.39x an
# 8192^2 image's pixels, 4096 px blocks 1.12x. 4096 px U-Net blocks peak at 1.2 GiB
# in a worker (docs/benchmarks.md), which bounds the choice.
BLOCK_CHOICES = (1024, 2048, 3072, 4096)
NEAR_TIE = 1.02  # finishing times within 2% count as equal
# the halo must exceed the largest object; nuclei in these images are < 100 px
DEFAULT_HALO = 128


@dataclass(frozen=True)
class Block:
    core: tuple[int, int, int, int]  # y0, x0, y1, x1 of the pixels this block owns
    read: tuple[int, int, int, int]  # the core grown by the halo (and to whole tiles)
    image_shape: tuple[int, int] = (0, 0)  # of the whole image
    stack_index: tuple[int, ...] = ()  # the slice of a stack it is in


def plan_blocks(
    height: int, width: int, block: int, halo: int, tiling: tuple[int, int] | None = None
) -> list[Block]:
    """Blocks of at most ``block`` px a side covering the image, with halos;
    with ``tiling`` (the engine's tile size and overlap) each read window is
    widened to whole tiles of the whole image's grid."""
    if block < 64 or halo < 0:
        raise InputError(f"block size {block} (at least 64) or halo {halo} (0 or more) is wrong")

    def span(start, stop, length):
        start, stop = max(0, start - halo), min(length, stop + halo)
        return aligned_span(start, stop, length, *tiling) if tiling else (start, stop)

    blocks = []
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            y1, x1 = min(height, y0 + block), min(width, x0 + block)
            (ry0, ry1), (rx0, rx1) = span(y0, y1, height), span(x0, x1, width)
            blocks.append(Block((y0, x0, y1, x1), (ry0, rx0, ry1, rx1), (height, width)))
    return blocks


def choose_block_size(
    height: int, width: int, workers: int, halo: int, tiling: tuple[int, int] | None
) -> int:
    """The block side (of ``BLOCK_CHOICES``) that finishes an image of
    ``height`` x ``width`` soonest on ``workers`` equal workers: the pixels
    each block reads (halo and whole tiles included), shared out largest
    first to the least loaded worker; the last block to finish decides. Ties
    go to smaller blocks, which show progress sooner and hold less memory."""

    def finish(block: int) -> float:
        loads = [0.0] * max(1, workers)
        reads = sorted(((b.read[2] - b.read[0]) * (b.read[3] - b.read[1]) for b in
                        plan_blocks(height, width, block, halo, tiling)), reverse=True)  # fmt: skip
        for read in reads:
            loads[loads.index(min(loads))] += read
        return max(loads)

    finishes = {block: finish(block) for block in BLOCK_CHOICES}
    soonest = min(finishes.values())
    return min(block for block, done in finishes.items() if done <= soonest * NEAR_TIE)


def segment_block(source, block: Block, model, options: dict) -> list[BlockObject]:
    """The objects a block owns (the task a worker runs). ``source`` is an
    array or a zarr path (opened here, so workers read their own windows);
    ``options`` are the engine's, the slice's intensity range among them."""
    from ..engine.predict import segment

    image = _open(source)
    ry0, rx0, ry1, rx1 = block.read
    window = np.asarray(image[(*block.stack_index, slice(ry0, ry1), slice(rx0, rx1))])
    loaded = _model(model, options.get("device", "auto"))
    result, _ = segment(window, loaded, part_of=(block.image_shape, (ry0, rx0)), **options)
    cy0, cx0, cy1, cx1 = block.core
    found = []
    for row, box in enumerate(result.boxes.astype(int)):
        y0, x0, y1, x1 = box
        crop = result.labels[y0:y1, x0:x1] == result.label_ids[row]
        ys, xs = np.nonzero(crop)
        if not len(ys):
            continue
        cy, cx = ys.mean() + y0 + ry0, xs.mean() + x0 + rx0
        if cy0 <= cy < cy1 and cx0 <= cx < cx1:
            found.append(
                BlockObject(
                    y0 + ry0, x0 + rx0, crop, float(result.scores[row]), int(result.class_ids[row])
                )
            )
    return found


def _open(source):
    if isinstance(source, (str, Path)):
        from ..io.zarr_io import open_zarr_image

        return open_zarr_image(source).array
    return source


def _model(model, device):
    from ..devices import configure_cpu_threads
    from ..models.loading import load_model

    configure_cpu_threads()
    return load_model(model, device)


def whole_image_range(image, info, index: tuple[int, ...] = ()) -> tuple[list, list]:
    """The intensity range the engine gives a whole 2D image (the slice at
    ``index`` of a stack): its strided percentiles, for all its blocks to share."""
    from ..engine.reading import NormalisedSlice, SliceReader

    work = NormalisedSlice(SliceReader(image, index, None), info)
    return work.lows.tolist(), work.highs.tolist()


def segment_blockwise(
    source,
    model,
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **kwargs,
) -> InstanceResult:
    """``iter_segment_blockwise`` run to the end, with ``progress(Progress)``
    per block and per region written, and ``cancel()`` checked between."""
    return drain(iter_segment_blockwise(source, model, **kwargs), progress, cancel)


def iter_segment_blockwise(
    source,
    model,
    *,
    client=None,
    block_size: int | None = None,
    halo: int = DEFAULT_HALO,
    task_source=None,
    labels_to=None,
    label_axes: tuple | None = None,
    **options,
) -> Generator[Progress, None, InstanceResult]:
    """An ``InstanceResult`` of a large 2D image or a stack of them (an
    array, or a zarr path that each worker opens itself; stacks slice by
    slice, ids unique through the stack), block by block: on ``client`` (a
    dask.distributed Client) when given, else in this process.
    ``task_source`` is what the tasks get instead of ``source`` (e.g. the
    image scattered to the workers once). ``labels_to``: the labels are
    written region by region into a new OME-Zarr label image there (with
    ``label_axes`` = (axes, scale)) and the result's labels are that array,
    never held whole; default: in memory. ``block_size``: by default the
    side that finishes soonest on the client's workers
    (``choose_block_size``), or ``DEFAULT_BLOCK`` in this process. Options
    as for the engine, except those that change the image's scale or axes
    (diameter, rescale, channel_axis, link), which block-wise runs do not
    take."""
    from ..engine import options as engine_options

    refused = engine_options.blockwise_refusals(options)
    if refused:
        raise InputError(f"block-wise segmentation does not take {', '.join(refused)}")
    if labels_to is not None:  # before hours of work, not after
        from ..io.zarr_io import refuse_existing

        refuse_existing(labels_to)
    image = _open(source)
    if image.ndim < 2 or (image.ndim > 2 and image.shape[-1] in (3, 4)):
        raise InputError(
            f"block-wise segmentation takes 2D gray images or stacks of them, not {image.shape}"
        )
    stack_shape = tuple(int(s) for s in image.shape[:-2])
    height, width = (int(s) for s in image.shape[-2:])
    loaded = _model(model, options.get("device", "auto"))
    if loaded.info.images_diameter:
        raise InputError(
            f"{loaded.name} was fine-tuned on images rescaled to {loaded.info.object_diameter} "
            f"px objects, and block-wise runs segment at the image's own scale: use it on "
            f"whole images (it rescales them itself)"
        )
    tiling = engine_options.tiling(
        loaded.info.task, options.get("tile_size"), options.get("overlap"), loaded.info.tile_size
    )
    if block_size is None:
        workers = len(client.scheduler_info().get("workers", {})) if client is not None else 0
        block_size = choose_block_size(height, width, workers, halo, tiling) if workers else (
            DEFAULT_BLOCK)  # fmt: skip
    plan = plan_blocks(height, width, block_size, halo, tiling)
    slices = list(np.ndindex(*stack_shape)) if stack_shape else [()]
    blocks, task_options = [], []
    given = options.get("intensity_range")
    for index in slices:
        # each slice normalised as the engine would the whole slice
        slice_range = given or whole_image_range(image, loaded.info, index)
        blocks += [replace(block, stack_index=index) for block in plan]
        task_options += [{**options, "intensity_range": slice_range}] * len(plan)
    model_ref = model if isinstance(model, str) or hasattr(model, "__fspath__") else loaded
    found: dict[tuple, list[BlockObject]] = {index: [] for index in slices}
    task_source = source if task_source is None else task_source
    runs = _run(task_source, blocks, model_ref, task_options, client)
    # shown at once: a block can take minutes on a CPU
    yield Progress(0, len(blocks), "segmenting blocks")
    for done, (block, objects) in enumerate(runs, 1):
        found[block.stack_index].extend(objects)
        yield Progress(done, len(blocks), "segmenting blocks")
    kept = {index: keep_objects(found.pop(index)) for index in slices}
    total = sum(len(k) for k in kept.values())
    shape = (*stack_shape, height, width)
    dtype = np.dtype(smallest_label_dtype(total))
    parts = []
    with ExitStack() as stack:
        if labels_to is None:
            labels = np.zeros(shape, dtype)
        else:
            from ..io.zarr_io import label_image_writer

            writer = label_image_writer(labels_to, shape, dtype, *(label_axes or ()))
            labels = stack.enter_context(writer)
        first = 1
        regions = [b.core for b in plan]
        for k, index in enumerate(slices):
            target = _SliceOf(labels, index) if index else labels
            painting = iter_paint_regions(kept[index], regions, target, first)
            steps = (k * len(regions), len(slices) * len(regions))
            boxes, areas = yield from _counted_on(painting, *steps)
            parts.append((boxes, areas))
            first += len(kept[index])
    if labels_to is not None:
        from ..io.zarr_io import open_label_image

        labels = open_label_image(labels_to)
    class_names = loaded.info.result_class_names
    objects = [o for index in slices for o in kept[index]]
    return InstanceResult(
        labels=labels,
        label_ids=np.arange(1, total + 1, dtype=np.int64),
        boxes=np.concatenate([p[0] for p in parts]),
        scores=np.array([o.score for o in objects], np.float32),
        class_ids=np.array([o.class_id for o in objects], np.int64),
        class_names=class_names,
        stack_index=np.repeat(np.arange(len(slices)), [len(kept[i]) for i in slices])
        if stack_shape
        else None,
        metadata={
            "blocks": len(blocks),
            "block_size": block_size,
            "halo": halo,
            **({"labels_file": str(labels_to)} if labels_to is not None else {}),
        },
        areas=np.concatenate([p[1] for p in parts]),
    )


def _counted_on(steps, before: int, total: int):
    """``steps`` (a generator of Progress) counted as part of a longer run."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        yield Progress(before + step.done, total, step.message)


class _SliceOf:
    """One 2D slice of a stack's label array, to paint into (zarr arrays have
    no views)."""

    def __init__(self, array, index: tuple[int, ...]):
        self.array, self.index, self.dtype = array, index, array.dtype

    def __setitem__(self, key, value):
        self.array[(*self.index, *key)] = value


def _run(source, blocks, model, task_options, client):
    """(block, its objects) for every block, in the order they finish."""
    if client is None:
        for block, options in zip(blocks, task_options):
            yield block, segment_block(source, block, model, options)
        return
    from distributed import as_completed

    futures = client.map(
        segment_block, [source] * len(blocks), blocks, [model] * len(blocks), task_options,
        pure=True, retries=3,
    )  # fmt: skip
    block_of = {future.key: block for future, block in zip(futures, blocks)}
    try:
        for future in as_completed(futures):
            yield block_of[future.key], future.result()
    finally:  # cancelled or failed: leave nothing running on the cluster
        client.cancel(futures)

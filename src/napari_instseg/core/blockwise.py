"""Block-wise segmentation of one large 2D image, in this process or on a
dask.distributed cluster.

The image is cut into blocks; each is segmented with a halo of context
around it (by the ordinary engine, tiles and all). A block keeps the objects
whose centre lies in its core, whole, halo included: with a halo wider than
the largest object, each object is kept by exactly the one block that sees
it whole (the engine's own rule for tiles, one level up). Blocks return their
objects as small crops, painted into one label image by
``core.block_painting`` (highest score first, onto background only, region
by region, so the label image can be a zarr array on disk). Ids are global.

So that blocks predict as the whole image would, every block is normalised
with the whole image's intensity range and its window is widened to whole
tiles of the whole image's tile grid, which it is then tiled with
(``part_of``): the same tiles, the same network outputs, the same blends.

Tasks are pure functions of (image source, block, model, options): dask
retries a block whose worker died, and the result does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .block_painting import BlockObject, keep_objects, paint_regions
from .tiling import aligned_span
from .types import InputError, Progress

DEFAULT_BLOCK = 2048
# the halo must exceed the largest object; nuclei in these images are < 100 px
DEFAULT_HALO = 128


@dataclass(frozen=True)
class Block:
    core: tuple[int, int, int, int]  # y0, x0, y1, x1 of the pixels this block owns
    read: tuple[int, int, int, int]  # the core grown by the halo (and to whole tiles)
    image_shape: tuple[int, int] = (0, 0)  # of the whole image


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


def segment_block(source, block: Block, model, options: dict) -> list[BlockObject]:
    """The objects a block owns (the task a worker runs). ``source`` is an
    array or a zarr path (opened here, so workers read their own windows)."""
    from .predict import segment

    image = _open(source)
    ry0, rx0, ry1, rx1 = block.read
    window = np.asarray(image[ry0:ry1, rx0:rx1])
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
    from pathlib import Path

    if isinstance(source, (str, Path)):
        from .zarr_io import open_zarr_image

        return open_zarr_image(source).array
    return source


def _model(model, device):
    from .devices import configure_cpu_threads
    from .models.loading import load_model

    configure_cpu_threads()
    return load_model(model, device)


def paint_objects(shape: tuple[int, int], objects: Iterable[BlockObject]):
    """(labels, scores, class ids) of objects painted into one label image in
    memory, highest score first onto background; duplicates dropped."""
    kept = keep_objects(objects)
    labels, _, _ = paint_regions(shape, kept, [(0, 0, *shape)])
    scores = np.array([o.score for o in kept], np.float32)
    return labels, scores, np.array([o.class_id for o in kept], np.int64)


def whole_image_range(image, info) -> tuple[list[float], list[float]]:
    """The intensity range the engine gives the whole image (its strided
    percentiles), for every block to share."""
    from .reading import NormalisedSlice, SliceReader

    work = NormalisedSlice(SliceReader(image, (), None), info)
    return work.lows.tolist(), work.highs.tolist()


def segment_blockwise(
    source,
    model,
    *,
    client=None,
    block_size: int = DEFAULT_BLOCK,
    halo: int = DEFAULT_HALO,
    progress: Callable[[Progress], None] | None = None,
    task_source=None,
    make_labels: Callable[[tuple[int, int], np.dtype], object] | None = None,
    **options,
):
    """An ``InstanceResult`` of a large 2D image (an array, or a zarr path
    that each worker opens itself), block by block: on ``client`` (a
    dask.distributed Client) when given, else in this process.
    ``task_source`` is what the tasks get instead of ``source`` (e.g. the
    image scattered to the workers once). ``make_labels(shape, dtype)``
    gives the array the labels are written into, region by region (e.g. a
    zarr array; default: one in memory). Options as for the engine, except
    those that change the image's scale or axes (diameter, rescale,
    channel_axis, link), which block-wise runs do not take."""
    from . import options as engine_options
    from .types import InstanceResult

    refused = [k for k in ("diameter", "channel_axis", "link") if options.get(k) is not None]
    refused += ["rescale"] if options.get("rescale", 1.0) != 1.0 else []
    if refused:
        raise InputError(f"block-wise segmentation does not take {', '.join(refused)}")
    image = _open(source)
    if image.ndim != 2:
        raise InputError(f"block-wise segmentation takes one 2D gray image, not {image.shape}")
    height, width = (int(s) for s in image.shape)
    loaded = _model(model, options.get("device", "auto"))
    tiling = engine_options.tiling(
        loaded.info.task, options.get("tile_size"), options.get("overlap"), loaded.info.tile_size
    )
    blocks = plan_blocks(height, width, block_size, halo, tiling)
    if options.get("intensity_range") is None:
        options["intensity_range"] = whole_image_range(image, loaded.info)
    model_ref = model if isinstance(model, str) or hasattr(model, "__fspath__") else loaded
    objects: list[BlockObject] = []
    task_source = source if task_source is None else task_source
    for done, found in enumerate(_run(task_source, blocks, model_ref, options, client), 1):
        objects.extend(found)
        if progress is not None:
            progress(Progress(done, len(blocks), "segmenting blocks"))
    kept = keep_objects(objects)
    del objects
    labels, boxes, areas = paint_regions(
        (height, width), kept, [b.core for b in blocks], make_labels,
        None if progress is None else lambda d, n: progress(Progress(d, n, "writing labels")),
    )  # fmt: skip
    class_names = list(loaded.info.class_names)
    if loaded.info.task == "semantic":
        class_names = ["background", loaded.info.postprocess.get("instance_class", "nucleus")]
    return InstanceResult(
        labels=labels,
        label_ids=np.arange(1, len(kept) + 1, dtype=np.int64),
        boxes=boxes,
        scores=np.array([o.score for o in kept], np.float32),
        class_ids=np.array([o.class_id for o in kept], np.int64),
        class_names=class_names,
        metadata={"blocks": len(blocks), "block_size": block_size, "halo": halo},
        areas=areas,
    )


def _run(source, blocks, model, options, client):
    if client is None:
        for block in blocks:
            yield segment_block(source, block, model, options)
        return
    from distributed import as_completed

    futures = client.map(
        segment_block, [source] * len(blocks), blocks, model=model, options=options,
        pure=True, retries=3,
    )  # fmt: skip
    for future in as_completed(futures):
        yield future.result()

"""Block-wise segmentation of one large 2D image, in this process or on a
dask.distributed cluster.

The image is cut into blocks; each is segmented with a halo of context
around it (by the ordinary engine, tiles and all). A block keeps the objects
whose centre lies in its core, whole, halo included: with a halo wider than
the largest object, each object is kept by exactly the one block that sees
it whole (the engine's own rule for tiles, one level up). Blocks return their
objects as small crops; the caller paints them into one label image, highest
score first and only onto background, so the rare object kept by two blocks
(its centre moved across a core edge between their two views) is painted
once. Ids are global from the start.

Tasks are pure functions of (image source, block, model, options): dask
retries a block whose worker died, and the result does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .postprocess import smallest_label_dtype
from .types import InputError, Progress

DEFAULT_BLOCK = 2048
# the halo must exceed the largest object; nuclei in these images are < 100 px
DEFAULT_HALO = 128
DUPLICATE_SHARE = 0.5  # an object whose free pixels fall below this share is a duplicate


@dataclass(frozen=True)
class Block:
    core: tuple[int, int, int, int]  # y0, x0, y1, x1 of the pixels this block owns
    read: tuple[int, int, int, int]  # the core grown by the halo, clipped to the image


@dataclass
class BlockObject:
    y0: int
    x0: int
    mask: np.ndarray  # bool crop at (y0, x0) in image pixels
    score: float
    class_id: int


def plan_blocks(height: int, width: int, block: int, halo: int) -> list[Block]:
    """Blocks of at most ``block`` px a side covering the image, with halos."""
    if block < 64 or halo < 0:
        raise InputError(f"block size {block} (at least 64) or halo {halo} (0 or more) is wrong")
    blocks = []
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            y1, x1 = min(height, y0 + block), min(width, x0 + block)
            read = (
                max(0, y0 - halo),
                max(0, x0 - halo),
                min(height, y1 + halo),
                min(width, x1 + halo),
            )
            blocks.append(Block((y0, x0, y1, x1), read))
    return blocks


def segment_block(source, block: Block, model, options: dict) -> list[BlockObject]:
    """The objects a block owns (the task a worker runs). ``source`` is an
    array or a zarr path (opened here, so workers read their own windows)."""
    from .predict import segment

    image = _open(source)
    ry0, rx0, ry1, rx1 = block.read
    window = np.asarray(image[ry0:ry1, rx0:rx1])
    loaded = _model(model, options.get("device", "auto"))
    result, _ = segment(window, loaded, **options)
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
    """(labels, scores, class ids): objects painted highest score first onto
    background; an object left with under half its pixels is a duplicate."""
    objects = sorted(objects, key=lambda o: -o.score)
    labels = np.zeros(shape, smallest_label_dtype(len(objects)))
    scores, classes = [], []
    for obj in objects:
        h, w = obj.mask.shape
        region = labels[obj.y0 : obj.y0 + h, obj.x0 : obj.x0 + w]
        free = obj.mask & (region == 0)
        if free.sum() < DUPLICATE_SHARE * obj.mask.sum():
            continue
        scores.append(obj.score)
        classes.append(obj.class_id)
        region[free] = len(scores)
    return labels, np.array(scores, np.float32), np.array(classes, np.int64)


def segment_blockwise(
    source,
    model,
    *,
    client=None,
    block_size: int = DEFAULT_BLOCK,
    halo: int = DEFAULT_HALO,
    progress: Callable[[Progress], None] | None = None,
    task_source=None,
    **options,
):
    """An ``InstanceResult`` of a large 2D image (an array, or a zarr path
    that each worker opens itself), block by block: on ``client`` (a
    dask.distributed Client) when given, else in this process.
    ``task_source`` is what the tasks get instead of ``source`` (e.g. the
    image scattered to the workers once). Options as for the engine."""
    from .postprocess import boxes_from_labels
    from .types import InstanceResult

    image = _open(source)
    if image.ndim != 2:
        raise InputError(f"block-wise segmentation takes one 2D gray image, not {image.shape}")
    height, width = (int(s) for s in image.shape)
    blocks = plan_blocks(height, width, block_size, halo)
    loaded = _model(model, options.get("device", "auto"))
    model_ref = model if isinstance(model, str) or hasattr(model, "__fspath__") else loaded
    objects: list[BlockObject] = []
    task_source = source if task_source is None else task_source
    for done, found in enumerate(_run(task_source, blocks, model_ref, options, client), 1):
        objects.extend(found)
        if progress is not None:
            progress(Progress(done, len(blocks), "segmenting blocks"))
    labels, scores, classes = paint_objects((height, width), objects)
    ids = np.arange(1, len(scores) + 1, dtype=np.int64)
    return InstanceResult(
        labels=labels,
        label_ids=ids,
        boxes=boxes_from_labels(labels, ids),
        scores=scores,
        class_ids=classes,
        class_names=list(loaded.info.class_names)
        if loaded.info.task != "semantic"
        else ["background", loaded.info.postprocess.get("instance_class", "nucleus")],
        metadata={"blocks": len(blocks), "block_size": block_size, "halo": halo},
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

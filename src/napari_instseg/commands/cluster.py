"""``predict --cluster local:N`` and ``--scheduler ADDRESS``: block-wise
segmentation of large gray images (2D, or stacks slice by slice) on
dask.distributed (``core.blockwise``)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from . import CommandError


def parse_cluster(text: str) -> int:
    """The worker count of ``local:N``; ``local`` alone: one per core, as
    many as memory allows (``default_local_workers``)."""
    from ..core.blockwise.local_cluster import default_local_workers

    kind, _, count = text.partition(":")
    if text == "local":
        return default_local_workers()
    if kind != "local" or not count.isdigit() or int(count) < 1:
        raise CommandError(
            f"--cluster {text!r}: use local (one worker per core) or local:N, e.g. local:2"
        )
    return int(count)


@contextmanager
def cluster_client(args):
    """A dask.distributed Client for the run, or None without either flag."""
    if not (getattr(args, "cluster", None) or getattr(args, "scheduler", None)):
        yield None
        return
    try:
        from distributed import Client

        from ..core.blockwise.local_cluster import slowed_workers, start_local_cluster
    except ImportError:
        raise CommandError(
            "cluster mode needs dask.distributed: pip install 'napari-instseg[cluster]'"
        ) from None
    cluster = None
    try:
        if args.cluster:
            workers = parse_cluster(args.cluster)
            # one thread per worker process: torch in each uses its one core
            cluster = start_local_cluster(workers, dashboard_address=":0")
            client = Client(cluster)
        else:
            client = Client(args.scheduler, timeout="20s")
    except (OSError, TimeoutError) as err:
        raise CommandError(f"cannot reach the dask scheduler ({err})") from None
    n = len(client.scheduler_info().get("workers", {}))
    print(f"dask: {n} workers, dashboard {client.dashboard_link}", file=sys.stderr)
    slowed = slowed_workers(client) if cluster is None else 0
    if slowed:
        print(
            f"note: {slowed} of the workers run with MALLOC_TRIM_THRESHOLD_ set (dask's "
            "default), which made segmenting 1.6x slower here; start them with the dask "
            "setting distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_ set to null",
            file=sys.stderr,
        )
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def segment_on_cluster(client, path, image, args, report, labels_to=None, channel_axis=None):
    """One file's instances, block by block on the cluster. A zarr input is
    read by the workers themselves; an image in memory is sent to them once.
    ``labels_to`` ((path, axes, scale)) writes the labels there as an
    OME-Zarr label image, region by region, instead of holding them."""
    from ..core.blockwise.blocks import segment_blockwise
    from ..core.engine.options import blockwise_refusals
    from ..core.io.zarr_io import is_zarr
    from ..core.types import InputError
    from .engine_flags import engine_options

    given = blockwise_refusals(engine_options(args, args.channel_axis))
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise InputError(
            f"block-wise runs (--cluster, --scheduler) segment gray images (2D or stacks) at "
            f"their own scale: they do not take {flags}"
        )
    if channel_axis is not None:
        raise InputError(
            "block-wise runs (--cluster, --scheduler) segment gray images; this one has channels"
        )
    source = str(path) if is_zarr(path) else image
    options = engine_options(args, None)  # the refused ones are None here
    task_source = source if isinstance(source, str) else client.scatter(image, broadcast=True)
    return segment_blockwise(
        source,
        args.model,
        client=client,
        block_size=args.block_size,
        progress=report,
        task_source=task_source,
        labels_to=None if labels_to is None else labels_to[0],
        label_axes=None if labels_to is None else labels_to[1:],
        **options,
    )


def submit_files(client, files, args) -> dict:
    """One task per TIFF/PNG/JPEG file (a whole image each), submitted at once;
    zarr inputs are left to block-wise runs. {path: future}"""
    from ..core.io.zarr_io import is_zarr
    from .engine_flags import engine_options

    options = engine_options(args, args.channel_axis)
    return {
        path: client.submit(segment_file, str(path), args.model, options, pure=True, retries=3)
        for path in files
        if not is_zarr(path)
    }


def segment_file(path: str, model: str, options: dict):
    """(instances, semantic or None) of one file: the task a worker runs."""
    from pathlib import Path

    from ..core.engine.predict import segment
    from ..core.io.inputs import read_input

    image, channel_axis, _ = read_input(Path(path), options["channel_axis"])
    return segment(image, model, **{**options, "channel_axis": channel_axis})

"""``predict --cluster local:N`` and ``--scheduler ADDRESS``: block-wise
segmentation of large 2D images on dask.distributed (``core.blockwise``)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from . import CommandError


def parse_cluster(text: str) -> int:
    """The worker count of ``local:N``."""
    kind, _, count = text.partition(":")
    if kind != "local" or not count.isdigit() or int(count) < 1:
        raise CommandError(f"--cluster {text!r}: use local:N with N workers, e.g. local:2")
    return int(count)


@contextmanager
def cluster_client(args):
    """A dask.distributed Client for the run, or None without either flag."""
    if not (getattr(args, "cluster", None) or getattr(args, "scheduler", None)):
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CommandError(
            "cluster mode needs dask.distributed: pip install 'napari-instseg[cluster]'"
        ) from None
    cluster = None
    try:
        if args.cluster:
            workers = parse_cluster(args.cluster)
            # one thread per worker process: torch in each uses its one core
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            client = Client(cluster)
        else:
            client = Client(args.scheduler, timeout="20s")
    except (OSError, TimeoutError) as err:
        raise CommandError(f"cannot reach the dask scheduler ({err})") from None
    n = len(client.scheduler_info().get("workers", {}))
    print(f"dask: {n} workers, dashboard {client.dashboard_link}", file=sys.stderr)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def segment_on_cluster(client, path, image, args, report):
    """One file's instances, block by block on the cluster. A zarr input is
    read by the workers themselves; an image in memory is sent to them once."""
    from ..core.blockwise import segment_blockwise
    from ..core.types import InputError
    from ..core.zarr_io import is_zarr

    if image.ndim != 2:
        raise InputError(f"cluster mode takes 2D gray images, not shape {tuple(image.shape)}")
    source = str(path) if is_zarr(path) else client.scatter(image, broadcast=True)
    options = {"device": args.device, "tile_size": args.tile_size, "overlap": args.overlap}
    if args.score_threshold is not None:
        options["score_threshold"] = args.score_threshold
    if args.mask_threshold is not None:
        options["mask_threshold"] = args.mask_threshold
    return segment_blockwise(
        str(path) if is_zarr(path) else image,
        args.model,
        client=client,
        block_size=args.block_size,
        progress=report,
        task_source=source,
        **options,
    )


def submit_files(client, files, args) -> dict:
    """One task per TIFF/PNG/JPEG file (a whole image each), submitted at once;
    zarr inputs are left to block-wise runs. {path: future}"""
    from ..core.zarr_io import is_zarr

    options = {
        "device": args.device,
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "channel_axis": args.channel_axis,
        "diameter": args.diameter,
        "augment": args.augment,
        "link": args.link,
        "link_threshold": args.link_threshold,
        "score_threshold": args.score_threshold,
        "mask_threshold": args.mask_threshold,
    }
    return {
        path: client.submit(segment_file, str(path), args.model, options, pure=True, retries=3)
        for path in files
        if not is_zarr(path)
    }


def segment_file(path: str, model: str, options: dict):
    """(instances, semantic or None) of one file: the task a worker runs."""
    from pathlib import Path

    from ..core import predict
    from ..core.models.architectures import SEMANTIC
    from ..core.models.loading import load_model
    from .predict import _read_input

    options = dict(options)
    image, channel_axis, _ = _read_input(Path(path), options.pop("channel_axis"))
    loaded = load_model(model, options.pop("device"))
    detection = {k: options.pop(k) for k in ("score_threshold", "mask_threshold")}
    if loaded.info.task == SEMANTIC:
        semantic = predict.segment_semantic(
            image, loaded, channel_axis=channel_axis, return_probabilities=False, **options
        )
        return semantic.instances, semantic
    instances = predict.segment_instances(
        image, loaded, channel_axis=channel_axis, **detection, **options
    )
    return instances, None

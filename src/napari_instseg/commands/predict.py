"""``napari-instseg predict``: segment image files, write labels, boxes and COCO."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from ..core.io.files import atomic_write
from ..core.io.tables import object_table, write_boxes_table, write_table
from . import EXIT_FAILED, EXIT_OK, CommandError, report_error
from .engine_flags import engine_options


def _unique_stems(files: list[Path]) -> tuple[list[Path], int]:
    """Inputs whose outputs would not collide; a later file with a stem seen
    before (a/x.tif and b/x.tif, x.tif and x.png) is reported and skipped."""
    seen: dict[str, Path] = {}
    kept, skipped = [], 0
    for path in files:
        if path.stem in seen:
            report_error(
                f"{path}: same name as {seen[path.stem]}; its outputs would overwrite "
                "the other's (skipped)"
            )
            skipped += 1
            continue
        seen[path.stem] = path
        kept.append(path)
    return kept, skipped


def _write_predictions(
    stem: str, outdir: Path, instances, semantic=None, zarr_axes=None, labels_written=False
) -> None:
    """Labels (and classes) as TIFF, or as OME-Zarr label images when
    ``zarr_axes`` is (axes, scale) (None, None: unknown), then the tables.
    ``labels_written``: the block-wise run wrote the labels itself."""
    import tifffile

    if zarr_axes is not None:
        from ..core.io.zarr_io import write_label_image

        if not labels_written:
            write_label_image(outdir / f"{stem}_labels.zarr", instances.labels, *zarr_axes)
        if semantic is not None:
            write_label_image(outdir / f"{stem}_semantic.zarr", semantic.classes, *zarr_axes)
    else:
        atomic_write(
            outdir / f"{stem}_labels.tif",
            lambda p: tifffile.imwrite(p, instances.labels, compression="zlib"),
        )
        if semantic is not None:
            atomic_write(
                outdir / f"{stem}_semantic.tif",
                lambda p: tifffile.imwrite(p, semantic.classes, compression="zlib"),
            )

    if "link" in instances.metadata:
        _write_linked(stem, outdir, instances)
    # written last: its presence says this input's outputs are complete (--skip-existing)
    write_boxes_table(outdir / f"{stem}_boxes.csv", object_table(instances))


def _write_linked(stem: str, outdir: Path, instances) -> None:
    """STEM_objects.csv (one row per 3D object or track) and, for tracks,
    STEM_tracks.csv in napari's Tracks columns."""
    from ..core.labels.linking import linked_object_table

    table = linked_object_table(instances)
    write_table(outdir / f"{stem}_objects.csv", table)
    if instances.tracks is not None:
        tracks = instances.tracks
        columns = {
            "track_id": tracks[:, 0].astype(np.int64),
            "t": tracks[:, 1].astype(np.int64),
            "y": tracks[:, 2],
            "x": tracks[:, 3],
        }
        write_table(outdir / f"{stem}_tracks.csv", columns)


def cmd_predict(args) -> int:
    from tqdm import tqdm

    from ..core.engine import predict
    from ..core.engine.diameter import describe
    from ..core.io.inputs import expand_inputs, read_input
    from ..core.models.loading import load_model
    from ..core.types import Cancelled, InputError, ModelError
    from .cluster import cluster_client, segment_on_cluster, submit_files

    outdir = Path(args.outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        if not os.access(outdir, os.W_OK):
            raise CommandError(f"{outdir}: output folder is not writable")
        if getattr(args, "trust_package", False):
            from ..core.models.bioimageio_import import trust_package

            trust_package(args.model)
        loaded = load_model(args.model, args.device)
    except ModelError as err:
        raise CommandError(str(err)) from None
    except OSError as err:
        raise CommandError(f"{outdir}: cannot create output folder ({err.strerror})") from None
    coco = None
    if args.coco:
        from ..core.io.coco_json import CocoBuilder

        coco = CocoBuilder()
    files = expand_inputs(args.inputs)
    if not files:
        raise CommandError("no input images (TIFF, PNG or JPEG files or folders of them)")
    files, failures = _unique_stems(files)
    show = sys.stderr.isatty() or args.progress
    if args.skip_existing:
        done = [p for p in files if (outdir / f"{p.stem}_boxes.csv").exists()]
        for path in done:
            print(f"{path}: done before (skipped)", file=sys.stderr)
        files = [p for p in files if p not in done]
    with cluster_client(args) as client:
        # many files on a cluster: one task per file, all submitted up front
        file_tasks = submit_files(client, files, args) if client and len(files) > 1 else {}
        for path in tqdm(files, desc="images", unit="image", disable=not show or len(files) < 2):
            try:
                written = False  # labels already on disk (block-wise into zarr)
                if path in file_tasks:
                    instances, semantic = file_tasks.pop(path).result()
                    zarr_axes = (None, None) if args.output_format == "zarr" else None
                else:
                    image, channel_axis, axes = read_input(path, args.channel_axis)
                    as_zarr = args.output_format == "zarr" or (
                        args.output_format is None and not isinstance(image, np.ndarray)
                    )
                    zarr_axes = axes if as_zarr else None
                    _announce(path, image, channel_axis, loaded, client, outdir, zarr_axes)
                    unit = "block" if client is not None else "tile"
                    bar = tqdm(total=0, desc=path.name, unit=unit, leave=False, disable=not show)
                    with bar:

                        def report(step, bar=bar):
                            bar.total = step.total
                            bar.n = step.done
                            bar.refresh()

                        if client is not None:
                            semantic = None
                            # labels written block by block, never held whole
                            labels_to = None
                            if zarr_axes is not None:
                                labels_to = (outdir / f"{path.stem}_labels.zarr", *zarr_axes)
                            instances = segment_on_cluster(
                                client, path, image, args, report, labels_to, channel_axis
                            )
                            written = labels_to is not None
                        else:
                            options = engine_options(args, channel_axis)
                            instances, semantic = predict.segment(
                                image, loaded, progress=report, **options
                            )
                _write_predictions(path.stem, outdir, instances, semantic, zarr_axes, written)
                if coco is not None:
                    _add_to_coco(coco, path.name, instances)
                sizing = describe(instances.metadata)
                linked = instances.metadata.get("link")
                if args.verbose or sizing or linked:
                    note = f" ({sizing})" if sizing else ""
                    if linked:
                        kind = "tracks" if linked["along"] == "t" else "3D objects"
                        note += f", linked into {linked['objects']} {kind}"
                    print(f"{path}: {len(instances)} objects{note}", file=sys.stderr)
            except (
                InputError,
                ModelError,
                Cancelled,
                OSError,
                ValueError,
                MemoryError,
                RuntimeError,
            ) as err:
                if args.debug:
                    raise
                failures += 1
                report_error(f"{path}: {err}")
    if coco is not None:
        target = Path(args.coco)
        try:
            atomic_write(target, lambda p: p.write_text(json.dumps(coco.document())))
        except OSError as err:
            report_error(f"{target}: cannot write COCO file ({err.strerror})")
            failures += 1
    return EXIT_FAILED if failures else EXIT_OK


def _announce(path, image, channel_axis, loaded, client, outdir, zarr_axes) -> None:
    """For a large input, one line before any work: its size, the time it
    will take here, the labels' size and where they go; an InputError
    instead when the labels cannot be held where this run would hold them."""
    from ..core.blockwise.sizing import LARGE_PIXELS, plan_run
    from ..core.types import InputError

    blockwise_to_zarr = client is not None and zarr_axes is not None
    suffix = "zarr" if zarr_axes is not None else "tif"
    workers = len(client.scheduler_info().get("workers", {})) if client is not None else 1
    plan = plan_run(
        image.shape,
        image.dtype,
        loaded.info.task,
        channel_axis=channel_axis,
        device=str(loaded.device),
        workers=workers,
        labels_in_memory=not blockwise_to_zarr,
        destination=outdir / f"{path.stem}_labels.{suffix}",
    )
    if plan.pixels < LARGE_PIXELS:
        return
    print(f"{path}: {plan.describe()}", file=sys.stderr)
    refusal = plan.refusal()
    if refusal is not None:
        raise InputError(refusal)


def _add_to_coco(coco, file_name: str, instances) -> None:
    """Add a result to the COCO document; stacks go in slice by slice."""
    from ..core.io.tables import slice_name

    for index, plane in instances.planes():
        coco.add(slice_name(file_name, index), plane)

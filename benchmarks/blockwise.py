"""Block-wise segmentation on a local dask cluster: speed-up, agreement, a killed worker.

    python benchmarks/blockwise.py [--size 8192] [--model nuclei-unet] [--workers 1 2]
                                   [--threads-per-worker 1] [--block N] [--kill] [--single]
                                   [--store /tmp/mosaic.zarr] [--labels-to /tmp/labels.zarr]

Builds a SIZE x SIZE uint16 zarr mosaic of real nuclei (the gray val screens
of ../shared/data, tiled and mirrored; never test images), then segments it
with ``predict --cluster local:N`` semantics (``core.blockwise`` on a
LocalCluster of N single-threaded workers) and reports wall time, Mpx/s and
each worker's peak memory. ``--single`` first runs the single-process tiled
engine (2 threads), matches every cluster run's objects to it one to one
(IoU > 0.5) both ways and prints each run's per-core efficiency: the single
process's core-seconds over the cluster's (workers x threads x seconds; 1.0
means a core does as much work in the cluster as in one process). The block
side is the one ``predict --cluster`` chooses unless ``--block`` gives one. ``--kill``
repeats the largest cluster run with one worker SIGKILLed mid-run.
``--labels-to`` writes the labels into an OME-Zarr label image region by
region (as ``predict --output-format zarr`` does) instead of holding them,
for images whose labels do not fit in memory (the 1 Gpx run); the client's
own peak memory is reported too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def build_mosaic(path: Path, size: int, data: Path) -> None:
    import zarr
    from accuracy_and_speed import load_images

    tiles = [
        im for kind, im, _, gray in load_images(data, "val") if gray and kind == "screen-520x696"
    ]
    tiles = [(t[..., 0] if t.ndim == 3 else t).astype(np.uint16) * 64 for t in tiles]
    array = zarr.create_array(
        str(path), shape=(size, size), chunks=(1024, 1024), dtype="uint16", overwrite=True
    )
    th, tw = tiles[0].shape
    k = 0
    for y in range(0, size, 1024):
        band = np.zeros((1024, size), np.uint16)
        for yy in range(0, 1024, th):
            for x in range(0, size, tw):
                tile = tiles[k % len(tiles)]
                tile = tile[:, ::-1] if (k // len(tiles)) % 2 else tile
                k += 1
                h, w = min(th, 1024 - yy), min(tw, size - x)
                band[yy : yy + h, x : x + w] = tile[:h, :w]
        array[y : y + 1024] = band[: min(1024, size - y)]


def one_to_one(a, b) -> tuple[float, float]:
    from napari_instseg.core.labels.metrics import iou_matrix

    iou = iou_matrix(a, b)
    return float((iou.max(1) > 0.5).mean()), float((iou.max(0) > 0.5).mean())


def run_cluster(
    store, workers: int, model: str, block, kill: bool = False, labels_to=None, threads: int = 1
):
    import psutil
    from distributed import Client

    from napari_instseg.core.blockwise.blocks import segment_blockwise
    from napari_instseg.core.blockwise.local_cluster import start_local_cluster

    with start_local_cluster(
        workers, threads, dashboard_address=None, memory_limit="4GiB"
    ) as cluster, Client(cluster) as client:  # fmt: skip
        # imports before timing
        client.run(lambda: __import__("napari_instseg.core.engine.predict"))
        pids = client.run(os.getpid)
        peaks = {pid: 0 for pid in pids.values()}
        me = psutil.Process()
        client_peak = [me.memory_info().rss]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                for pid in list(peaks):
                    with contextlib.suppress(psutil.NoSuchProcess):  # a killed worker
                        peaks[pid] = max(peaks[pid], psutil.Process(pid).memory_info().rss)
                for pid in client.run(os.getpid).values() if kill else []:
                    peaks.setdefault(pid, 0)
                client_peak[0] = max(client_peak[0], me.memory_info().rss)
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        if kill:

            def killer():
                while not any(client.processing().values()):
                    time.sleep(0.1)
                time.sleep(5)
                os.kill(next(iter(pids.values())), signal.SIGKILL)

            threading.Thread(target=killer, daemon=True).start()
        start = time.perf_counter()
        if labels_to is not None:
            import shutil

            shutil.rmtree(labels_to, ignore_errors=True)
        result = segment_blockwise(
            str(store), model, client=client, block_size=block, labels_to=labels_to
        )
        seconds = time.perf_counter() - start
        stop.set()
        print(f"# client peak memory {client_peak[0] / 2**30:.2f} GiB", flush=True)
        return result, seconds, max(peaks.values()) / 2**30


def run_single(store, model: str, threads: int = 2):
    import torch
    import zarr

    from napari_instseg import segment_instances, segment_semantic

    torch.set_num_threads(threads)
    image = zarr.open(str(store), mode="r")
    start = time.perf_counter()
    if "unet" in model:
        single = segment_semantic(image, model, return_probabilities=False).instances
    else:
        single = segment_instances(image, model)
    return single, time.perf_counter() - start


def main() -> int:
    from _common import git_commit, machine_description

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--model", default="nuclei-unet")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--block", type=int, default=None, help="default: predict's choice")
    parser.add_argument("--kill", action="store_true")
    parser.add_argument("--single", action="store_true")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--labels-to", type=Path, default=None)
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).parents[1] / "../shared/data/dsb2018"
    )
    args = parser.parse_args()

    print(f"# block-wise benchmark, commit {git_commit()}")
    print(f"# {machine_description()}")
    args.store = args.store or Path(f"/tmp/instseg-mosaic-{args.size}.zarr")
    if not args.store.exists():
        start = time.perf_counter()
        build_mosaic(args.store, args.size, args.data)
        print(f"# mosaic built in {time.perf_counter() - start:.0f} s", flush=True)
    megapixels = args.size**2 / 1e6
    threads = args.threads_per_worker
    print(f"# {args.size}x{args.size} uint16 zarr mosaic of val screens, {args.model}, "
          f"{threads} thread(s) per worker")  # fmt: skip
    print("run | block | seconds | Mpx/s | objects | peak worker GiB | "
          "matched to the reference (both ways) | per-core efficiency")  # fmt: skip
    single = single_core_seconds = None
    if args.single:
        single, seconds = run_single(args.store, args.model)
        single_core_seconds = 2 * seconds
        print(f"single process (2 threads) | - | {seconds:.0f} | {megapixels / seconds:.2f} | "
              f"{len(single)} | - | (reference) | 1.00", flush=True)  # fmt: skip
    reference = single

    def report(name, workers, result, seconds, peak):
        nonlocal reference
        match = "-"
        if args.labels_to is None:  # labels on disk: no comparison in memory
            if reference is None:
                reference, match = result, "(reference)"
            else:
                both = one_to_one(reference.labels, result.labels)
                match = f"{both[0]:.4f} / {both[1]:.4f}"
        efficiency = "-"
        if single_core_seconds:
            efficiency = f"{single_core_seconds / (workers * threads * seconds):.2f}"
        print(f"{name} | {result.metadata['block_size']} | {seconds:.0f} | "
              f"{megapixels / seconds:.2f} | {len(result)} | {peak:.2f} | {match} | "
              f"{efficiency}", flush=True)  # fmt: skip

    for workers in args.workers:
        result, seconds, peak = run_cluster(
            args.store, workers, args.model, args.block, labels_to=args.labels_to, threads=threads
        )
        report(f"local:{workers}", workers, result, seconds, peak)
    if args.kill:
        workers = max(args.workers)
        result, seconds, peak = run_cluster(
            args.store, workers, args.model, args.block, kill=True, threads=threads
        )
        report(f"local:{workers}, one worker killed", workers, result, seconds, peak)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

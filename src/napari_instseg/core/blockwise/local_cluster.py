"""A dask LocalCluster that segments at a plain process's speed, and how
many workers a machine should run.

dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting
any of glibc's malloc thresholds switches off its dynamic mmap threshold, so
every large array is mapped afresh and its pages faulted in: the bundled
U-Net on an 8192^2 image took 108 s in one thread with that variable and 69 s
without (docs/benchmarks.md). Workers started here run without it.
"""

from __future__ import annotations

import os

from ..devices import available_cores
from .sizing import free_memory

SLOWING_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
# a worker's peak with the largest blocks (4096 px, U-Net, 1 thread: 1.0 GiB
# measured), with room to spare for the scheduler and the client's painting
WORKER_MEMORY = int(1.5 * 2**30)


def default_local_workers(cores: int | None = None, free: int | None = None) -> int:
    """Workers for ``--cluster local``: one single-threaded worker per core
    (per core the fastest, docs/benchmarks.md), as many as memory allows."""
    cores = available_cores() if cores is None else cores
    free = free_memory() if free is None else free
    return max(1, min(cores, free // WORKER_MEMORY))


def start_local_cluster(workers: int, threads_per_worker: int = 1, **kwargs):
    """A ``distributed.LocalCluster`` of worker processes without dask's
    malloc setting (``SLOWING_VARIABLE``); ``kwargs`` go to LocalCluster."""
    import dask
    from distributed import LocalCluster

    # None removes the variable from what the nanny sets (distributed's nanny docs)
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{SLOWING_VARIABLE}": None}):
        return LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=True, **kwargs
        )


def slowed_workers(client) -> int:
    """How many of ``client``'s workers run with ``SLOWING_VARIABLE`` set (a
    cluster started elsewhere with dask's defaults)."""
    found = client.run(os.environ.get, SLOWING_VARIABLE)
    return sum(value is not None for value in found.values())

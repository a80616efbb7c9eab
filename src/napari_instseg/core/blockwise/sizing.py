"""The size of a run before it starts: how many pixels, how long on this
machine, how large the labels are and where they go; and a refusal, with
the reason and the flag that fixes it, when the labels cannot fit where they
would be held. Nothing here reads a pixel: a store that declares 10^6 x 10^6
pixels is planned from its header in milliseconds.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..models.architectures import SEMANTIC

# Whole-image throughput of the bundled models, in seconds per megapixel, as
# measured in docs/benchmarks.md: on this kind of CPU with 2 threads in float32
# (520x696 frames: U-Net 0.97-1.14, Mask R-CNN about 2.3-2.5), on an H200 for
# 3072x3072 fields (U-Net 2.0 s, Mask R-CNN 1.5 s). For a plan, not a promise.
SECONDS_PER_MPX = {
    ("cpu", SEMANTIC): 1.1,
    ("cpu", "instance"): 2.5,
    ("cuda", SEMANTIC): 0.22,
    ("cuda", "instance"): 0.17,
}
CPU_THREADS_MEASURED = 2
LARGE_PIXELS = 64 * 1024**2  # inputs above this get their plan printed first
MEMORY_SHARE = 0.5  # labels held in memory may take at most this share of what is free
COMMAND_LINE_FIX = (
    "segment it block by block into zarr with --cluster local (or --scheduler ADDRESS)"
)


@dataclass(frozen=True)
class RunPlan:
    """What a run will take, from the input's declared shape alone."""

    shape: tuple[int, ...]  # spatial and stack axes (no channels)
    dtype: str
    input_bytes: int
    label_bytes: int  # uint32 labels, uncompressed
    seconds: float
    device: str
    labels_in_memory: bool  # held whole in this process (else written region by region)
    memory_free: int
    destination: str

    @property
    def pixels(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> str:
        """One line: input size, time, output size and where it goes."""
        held = "held in memory, then" if self.labels_in_memory else "written block by block"
        return (
            f"{_pixels(self.pixels)} ({' x '.join(map(str, self.shape))} {self.dtype}, "
            f"{_bytes(self.input_bytes)}), about {_duration(self.seconds)} on this "
            f"machine's {self.device.upper()}; labels up to {_bytes(self.label_bytes)}, "
            f"{held} to {self.destination}"
        )

    def refusal(self, fix: str = COMMAND_LINE_FIX) -> str | None:
        """Why the run cannot work as asked, and ``fix``, what to do instead; or None."""
        if self.labels_in_memory and self.label_bytes > MEMORY_SHARE * self.memory_free:
            return (
                f"the labels of {_pixels(self.pixels)} need up to {_bytes(self.label_bytes)} in "
                f"memory and this machine has {_bytes(self.memory_free)} free: {fix}"
            )
        return None


def plan_run(
    shape,
    dtype,
    task: str,
    *,
    channel_axis: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    workers: int = 1,
    labels_in_memory: bool = True,
    destination: str | os.PathLike = "memory",
) -> RunPlan:
    """The plan of segmenting an image of ``shape`` (all its axes) and
    ``dtype`` with a model of ``task`` (``"semantic"`` or ``"instance"``)."""
    import numpy as np

    shape = tuple(int(s) for s in shape)
    rgb = channel_axis is None and len(shape) > 2 and shape[-1] in (3, 4)
    channel = None if channel_axis is None else channel_axis % len(shape)
    channel = len(shape) - 1 if rgb else channel
    channels = 1 if channel is None else shape[channel]
    spatial = tuple(s for axis, s in enumerate(shape) if axis != channel)
    pixels = math.prod(spatial)
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    seconds = pixels / 1e6 * SECONDS_PER_MPX[(kind, task if task == SEMANTIC else "instance")]
    if kind == "cpu":
        seconds *= CPU_THREADS_MEASURED / max(1, threads or os.cpu_count() or 1)
    seconds /= max(1, workers)
    return RunPlan(
        shape=spatial,
        dtype=str(np.dtype(dtype)),
        input_bytes=pixels * channels * np.dtype(dtype).itemsize,
        label_bytes=pixels * 4,
        seconds=seconds,
        device=kind,
        labels_in_memory=labels_in_memory,
        memory_free=free_memory(),
        destination=str(destination),
    )


def free_memory() -> int:
    """Bytes of memory the system could give this process now (Linux's
    MemAvailable; elsewhere the physical memory)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63


def free_disk(folder) -> int:
    """Bytes free on the disk that holds ``folder`` (or its nearest parent)."""
    folder = Path(folder).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _pixels(n: int) -> str:
    for unit, size in (("Tpx", 1e12), ("Gpx", 1e9), ("Mpx", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} px"


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"

"""Running an engine generator to the end: the synchronous form of every
engine (``predict``, ``blockwise``) for scripts, the CLI and tests.

The engines yield a ``Progress`` per tile (or block) so that a widget can run
them in a thread worker with progress and cancel; ``drain`` does the same in
the calling thread, with callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

from .types import Cancelled, Progress

ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


def drain(
    generator: Generator,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
):
    """Run an engine generator to the end, reporting progress and honouring cancel."""
    while True:
        if cancel is not None and cancel():
            generator.close()
            raise Cancelled("cancelled")
        try:
            step = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)

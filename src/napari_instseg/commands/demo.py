"""``napari-instseg demo``: napari with the nuclei sample segmented
(``napari_instseg.demo``), or its screenshot."""

from __future__ import annotations


def cmd_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(screenshot=args.screenshot, model=args.model)

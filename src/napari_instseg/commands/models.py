"""``napari-instseg models``: the models the registry knows, and whether
their weights are here."""

from __future__ import annotations

from . import EXIT_OK


def cmd_models(args) -> int:
    from ..core.models.registry import registered_models

    entries = registered_models()
    width = max(len(n) for n in entries)
    for name, entry in entries.items():
        state = "ready" if entry.available() else "not downloaded/installed"
        print(f"{name:<{width}}  {entry.description} [{state}]")
    return EXIT_OK

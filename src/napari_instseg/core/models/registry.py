"""The one registry of models that widgets, CLI and API share: names mapped
to ``RegisteredModel`` entries (a description and a way to get weights).

The bundled nuclei models and torchvision's COCO Mask R-CNN are registered on
import (``bundled``); checkpoints are added with ``register_checkpoint``.
Listing models and reading their stored settings needs no torch.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

from ..types import ModelError
from . import checkpoint
from .info import RegisteredModel

_ENTRIES: dict[str, RegisteredModel] = {}
_LISTENERS: list = []  # weak references to callables told about new models


def register_model(entry: RegisteredModel) -> None:
    _ENTRIES[entry.name] = entry
    for ref in list(_LISTENERS):
        callback = ref()
        if callback is None:
            _LISTENERS.remove(ref)
            continue
        try:
            callback()
        except RuntimeError:  # e.g. a closed widget's Qt object
            _LISTENERS.remove(ref)


def on_registry_change(callback) -> None:
    """Call ``callback()`` whenever a model is registered (weakly held, so a
    closed widget is not kept alive)."""
    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else weakref.ref(callback)
    _LISTENERS.append(ref)


def registered(name: str) -> RegisteredModel | None:
    """The entry registered under ``name``, or None."""
    return _ENTRIES.get(str(name))


def registered_models() -> dict[str, RegisteredModel]:
    """A copy of the registry, in registration order."""
    return dict(_ENTRIES)


def register_checkpoint(path: str | os.PathLike, name: str | None = None) -> str:
    """Register a checkpoint file under ``name`` (default: its metadata name)."""
    path = Path(path)
    metadata = checkpoint.read_metadata(path)
    name = name or metadata.get("name") or path.stem
    register_model(
        RegisteredModel(
            name=name,
            description=metadata.get("description") or f"checkpoint {path}",
            weights=lambda: checkpoint.load_checkpoint(path),
            available=path.exists,
            architecture=metadata.get("architecture"),
            metadata=lambda: checkpoint.read_metadata(path),
            source=lambda: path,
        )
    )
    return name


def stored_postprocess(name: str) -> dict:
    """The post-processing settings stored with a registered model (e.g. its
    tuned ``score_threshold``), read without loading weights; {} if unknown."""
    entry = _ENTRIES.get(name)
    if entry is None or entry.metadata is None or not entry.available():
        return {}
    try:
        return dict(entry.metadata().get("postprocess") or {})
    except (OSError, ValueError, ModelError):
        return {}


def list_models() -> dict[str, str]:
    """Registered model names with a one-line description each."""
    return {name: entry.description for name, entry in _ENTRIES.items()}


def models_for_task(task: str) -> list[tuple[str, bool]]:
    """(name, weights available) of the registered models for ``task``
    ("semantic" or "instance"), available ones first."""
    entries = [(n, e.available()) for n, e in _ENTRIES.items() if e.task in (task, None)]
    return sorted(entries, key=lambda entry: not entry[1])


def _register_defaults() -> None:
    from .bundled import default_entries

    for entry in default_entries():
        register_model(entry)


_register_defaults()

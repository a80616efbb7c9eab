"""From a name, a checkpoint path or a loaded model to a ``LoadedModel`` on a
device, with the models loaded by name or path kept in a small cache.

Loading the bundled Mask R-CNN costs about 0.1 s, a third of a 512 px call
on a CPU, and the widgets would pay it on every Run: a model is loaded again
only when its weights file changed (by modification time), or for another
device.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from ..types import ModelError
from . import checkpoint
from .architectures import architecture
from .bioimageio_import import is_package
from .info import ModelInfo
from .loaded import LoadedModel, build_model
from .registry import registered, registered_models

if TYPE_CHECKING:
    import torch

CACHED_MODELS = 4  # a U-Net and a Mask R-CNN on two devices


_cache: OrderedDict[tuple, LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()


def load_model(
    model, device: str | torch.device = "auto", *, trust_package: bool = False
) -> LoadedModel:
    """A ``LoadedModel`` from a registered name, a checkpoint path, a
    bioimage.io package (``.zip`` or folder) or a LoadedModel.

    ``trust_package=True`` lets a package run the architecture code it ships
    (``core.models.bioimageio_import``); never needed for our own packages.
    Models given by name or path come from a cache of the last few loaded,
    so callers share them: train a copy, never a model from here in place.
    """
    from ..devices import resolve_device

    if trust_package:
        from .bioimageio_import import trust_package as trust

        trust(model)

    target = resolve_device(device)
    if isinstance(model, LoadedModel):
        if model.device != target and device != "auto":
            model.module.to(target)
            if model.inference_module is not None:
                model.inference_module.to(target)
            model.device = target
        return model
    weights, source = _weights_and_source(model)
    identity = _file_identity(model if source is _PACKAGE else source)
    key = (str(model), id(registered(model)), *identity, str(target))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    loaded = _load_package(model, target) if source is _PACKAGE else _load(*weights(), target)
    with _cache_lock:
        _cache[key] = loaded
        while len(_cache) > CACHED_MODELS:
            _cache.popitem(last=False)
    return loaded


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _weights_and_source(model):
    """(a function returning (state, metadata), the weights file or None)."""
    entry = registered(model) if isinstance(model, (str, os.PathLike)) else None
    if entry is not None:
        return entry.weights, entry.source() if entry.source else None
    if isinstance(model, (str, os.PathLike)) and is_package(model):
        return None, _PACKAGE
    if isinstance(model, (str, os.PathLike)) and (
        Path(model).suffix or os.sep in str(model) or Path(model).exists()
    ):
        return (lambda: checkpoint.load_checkpoint(model)), Path(model)
    known = ", ".join(registered_models()) or "none"
    raise ModelError(f"unknown model {model!r}; known models: {known}")


_PACKAGE = object()  # _weights_and_source's "source" for a bioimage.io package


def _load_package(path, target) -> LoadedModel:
    """One of our packages rebuilt by our code, or someone else's model."""
    from .bioimageio_import import describe, load_foreign, ours, state_and_metadata

    if not Path(path).exists():
        raise ModelError(f"{path}: no such bioimage.io package")
    descr = describe(path)
    if ours(descr) is not None:
        return _load(*state_and_metadata(path, descr), target)
    return load_foreign(path, descr, target)


def _file_identity(path) -> tuple:
    """A weights file's resolved path and modification time (a changed file
    is loaded again); for a missing file, a fresh key, so its error repeats."""
    if path is None:
        return (None, None)
    try:
        path = Path(path).resolve()
        return (str(path), path.stat().st_mtime_ns)
    except OSError:
        return (str(path), object())


def _load(state: dict, metadata: dict, target) -> LoadedModel:
    info = ModelInfo.from_metadata(metadata)
    module = build_model(info)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ModelError(
            f"weights do not fit the {info.architecture} described in the metadata: {detail}"
        ) from None
    module.eval().to(target)
    inference = architecture(info.architecture).prepare_inference(module)
    return LoadedModel(module, info, target, None if inference is None else inference.to(target))

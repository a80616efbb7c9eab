"""Checkpoints: one safetensors file with the weights and a JSON header.

safetensors stores tensors only, so loading one never runs code from the
file (unlike pickle-based ``torch.load``). The model's description travels in
the file's metadata under ``napari_instseg`` as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from ..io.files import atomic_write
from ..types import ModelError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that handle weights: reading a
# checkpoint's metadata (the widgets' model lists) must not wait 1-2 s for it.

METADATA_KEY = "napari_instseg"
FORMAT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    metadata: dict,
    half_precision: bool = False,
) -> Path:
    """Write weights and metadata atomically (temporary file, then rename).

    ``half_precision`` stores floating-point weights as float16 (halves the
    size; the loader casts back to float32).
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        if half_precision and value.is_floating_point():
            value = value.half()
        tensors[key] = value
    header = {METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **metadata})}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint, without loading its weights."""
    path = Path(path)
    _check_exists(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"{path}: not a readable safetensors checkpoint ({err})") from None
    if raw is None:
        raise ModelError(f"{path}: safetensors file without napari-instseg metadata")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelError(f"{path}: checkpoint metadata is not valid JSON") from None
    if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}: unsupported checkpoint format")
    return metadata


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights (float32) and metadata of a checkpoint written by ``save_checkpoint``."""
    from safetensors.torch import load_file

    path = Path(path)
    metadata = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"{path}: corrupt or truncated checkpoint ({err})") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return state, metadata


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"{path}: no such checkpoint file")
    if path.suffix != ".safetensors":
        raise ModelError(
            f"{path}: checkpoints must be .safetensors files "
            "(pickled .pt/.pth files can run code when loaded and are refused)"
        )

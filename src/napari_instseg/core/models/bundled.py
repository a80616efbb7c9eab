"""The models every installation has: the bundled nuclei models (weights
inside the package) and torchvision's COCO Mask R-CNN (weights from torch's
hub folder, if the user put them there)."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ..types import ModelError
from . import checkpoint
from .info import RegisteredModel

BUNDLED = {
    "nuclei-unet": (
        "unet",
        "U-Net (background/nucleus/boundary) for nuclei in fluorescence and H&E; "
        "bundled weights trained on DSB2018",
    ),
    "nuclei-maskrcnn": (
        "maskrcnn",
        "Mask R-CNN (ResNet-18-FPN) for nuclei in fluorescence and H&E; "
        "bundled weights trained on DSB2018",
    ),
}


def bundled_weights_path(name: str) -> Path:
    return Path(str(resources.files("napari_instseg") / "weights" / f"{name}.safetensors"))


def amendments(name: str) -> dict:
    """Metadata learnt after a bundled model's weights were committed (e.g. its
    trained object diameter), kept beside them in ``NAME.metadata.json`` so
    that the 28 MB of weights need not be committed again for a few numbers."""
    path = bundled_weights_path(name).with_suffix(".metadata.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _bundled_metadata(name: str) -> dict:
    return {**checkpoint.read_metadata(bundled_weights_path(name)), **amendments(name)}


def _bundled_loader(name: str) -> Callable[[], tuple[dict, dict]]:
    def load() -> tuple[dict, dict]:
        path = bundled_weights_path(name)
        if not path.exists():
            raise ModelError(
                f"the bundled weights of {name!r} are missing from this installation "
                f"(expected {path}); reinstall napari-instseg or pass a checkpoint path"
            )
        state, metadata = checkpoint.load_checkpoint(path)
        return state, {**metadata, **amendments(name)}

    return load


def _coco_weights() -> tuple[dict, dict]:
    from .coco import coco_maskrcnn_weights

    return coco_maskrcnn_weights()


def _coco_file() -> Path:
    from .coco import coco_weights_file

    return coco_weights_file()


def default_entries() -> list[RegisteredModel]:
    entries = [
        RegisteredModel(
            name,
            description,
            _bundled_loader(name),
            lambda n=name: bundled_weights_path(n).exists(),
            architecture,
            lambda n=name: _bundled_metadata(n),
            lambda n=name: bundled_weights_path(n),
        )
        for name, (architecture, description) in BUNDLED.items()
    ]
    entries.append(
        RegisteredModel(
            "coco-maskrcnn",
            "torchvision's COCO-pretrained Mask R-CNN (ResNet-50-FPN, 91 everyday classes); "
            "weights downloaded by torchvision on first use",
            _coco_weights,
            lambda: _coco_file().exists(),
            "maskrcnn",
            source=_coco_file,
        )
    )
    return entries

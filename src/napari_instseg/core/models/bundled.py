"""The models every installation has: the bundled nuclei models (weights
inside the package) and torchvision's COCO Mask R-CNN (weights from torch's
hub folder, if the user put them there)."""

from __future__ import annotations

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


def _bundled_loader(name: str) -> Callable[[], tuple[dict, dict]]:
    def load() -> tuple[dict, dict]:
        path = bundled_weights_path(name)
        if not path.exists():
            raise ModelError(
                f"the bundled weights of {name!r} are missing from this installation "
                f"(expected {path}); reinstall napari-instseg or pass a checkpoint path"
            )
        return checkpoint.load_checkpoint(path)

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
            lambda n=name: checkpoint.read_metadata(bundled_weights_path(n)),
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

"""The models every installation has: the bundled nuclei models (weights
inside the package) and torchvision's COCO Mask R-CNN (weights from torch's
hub folder, if the user put them there)."""

from __future__ import annotations

import json
import os
import sys
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
            coco_maskrcnn_weights,
            lambda: coco_weights_file().exists(),
            "maskrcnn",
            source=coco_weights_file,
        )
    )
    return entries


# torchvision's COCO-pretrained Mask R-CNN. torchvision downloads the weights into
# torch hub's cache on first use; offline, we refuse with the file name and folder
# to put it in, never a traceback. The file is a pickle, so it is read with
# weights_only=True (tensors only).
COCO_URL = "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"


def coco_weights_file() -> Path:
    return torch_hub_dir() / "checkpoints" / Path(COCO_URL).name


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``, without importing torch when it is not loaded yet
    (the widgets ask whether the weights exist when they open). Until torch is
    imported, nobody can have called ``torch.hub.set_dir``, so torch's
    documented default applies: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    if "torch" in sys.modules:
        import torch

        return Path(torch.hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))) / "hub"


def coco_metadata() -> dict:
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    categories = list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    return {
        "name": "coco-maskrcnn",
        "architecture": "maskrcnn",
        "config": {"torchvision_coco": True, "num_classes": len(categories)},
        "class_names": categories,
        "in_channels": 3,
        "normalization": {"low": 0.0, "high": 100.0},
        "tile_size": 1024,
        "description": "torchvision Mask R-CNN ResNet-50-FPN, COCO V1 weights",
        "training": {"source": COCO_URL},
    }


def coco_maskrcnn_weights() -> tuple[dict, dict]:
    import torch

    path = coco_weights_file()
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(COCO_URL, str(path), progress=False)
        except Exception as err:  # any network failure means the same to the user
            raise ModelError(
                f"coco-maskrcnn weights are not on this machine and could not be downloaded "
                f"({type(err).__name__}); download {COCO_URL} and put it at {path}"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"{path}: not a readable weights file ({err})") from None
    return state, coco_metadata()

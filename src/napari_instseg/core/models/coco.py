"""torchvision's COCO-pretrained Mask R-CNN as a registry entry.

torchvision downloads the weights into torch hub's cache on first use. Offline,
we refuse with the file name and folder to put it in, never a traceback.
The file is a pickle, so it is read with ``weights_only=True`` (tensors only).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..types import ModelError

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

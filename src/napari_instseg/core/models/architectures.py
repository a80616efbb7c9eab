"""One record per architecture: everything that differs between a U-Net and
a Mask R-CNN, so that the registry, training, fine-tuning, the engine, the
CLI and the widgets ask the record instead of comparing names, and a third
architecture is added here alone.

Nothing here imports torch at import time: builders and tile
predictors are imported when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..types import InputError, ModelError

SEMANTIC, INSTANCE = "semantic", "instance"


@dataclass(frozen=True)
class Architecture:
    """What the rest of the package needs to know about an architecture.

    ``tile_predictor()`` returns the function the engine runs on a batch of
    tiles: ``(module, batch) -> probabilities`` for semantic models,
    ``(module, batch, sizes, score_threshold) -> detections`` for instance
    models. The training recipes live in ``core.training.recipes``.
    """

    name: str
    task: str
    title: str  # for people: "U-Net", "Mask R-CNN"
    build: Callable[[dict], object]
    tile_predictor: Callable[[], Callable]
    new_model_config: dict  # the bundled models' layout, for training from scratch
    train_batch_size: int
    prepare_inference: Callable[[object], object | None] = lambda module: None
    learns_ignored_pixels: bool = True  # can training skip unannotated pixels?
    learns_class_maps: bool = False  # can it train on class maps (semantic training)?

    def new_model_classes(self, class_names: list[str], semantic: bool) -> list[str]:
        """Class names (background first) of a new model for the user's classes."""
        if semantic and not self.learns_class_maps:
            raise InputError(f"class maps (--semantic) train a U-Net, not a {self.title}")
        if not class_names:
            raise InputError("training a new model needs its class names (--classes)")
        if self.task == SEMANTIC and not semantic:  # instances from a boundary-aware class map
            return ["background", class_names[0], "boundary"]
        return ["background", *class_names]

    def new_model_postprocess(self, class_names: list[str]) -> dict:
        return {"min_size": 8, "instance_class": class_names[1]} if self.task == SEMANTIC else {}


def _build_unet(config: dict):
    from .unet import build_unet

    return build_unet(**config)


def _build_maskrcnn(config: dict):
    from .maskrcnn import build_maskrcnn

    return build_maskrcnn(**config)


def _unet_predictor():
    from .unet import class_probabilities

    return class_probabilities


def _maskrcnn_predictor():
    from .maskrcnn import detect_without_pasting

    return detect_without_pasting


def _unet_inference_copy(module):
    from .unet import inference_copy

    return inference_copy(module)


ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture(
        name="unet",
        task=SEMANTIC,
        title="U-Net",
        build=_build_unet,
        tile_predictor=_unet_predictor,
        new_model_config={"in_channels": 3, "widths": [16, 32, 64, 128, 256], "norm": "batch"},
        train_batch_size=8,
        # BatchNorm folded into the convolutions (one pass less over every feature
        # map) and no concatenated tensors in the decoder: about 1.2x faster on CPUs
        prepare_inference=_unet_inference_copy,
        learns_class_maps=True,
    ),
    "maskrcnn": Architecture(
        name="maskrcnn",
        task=INSTANCE,
        title="Mask R-CNN",
        build=_build_maskrcnn,
        tile_predictor=_maskrcnn_predictor,
        new_model_config={
            "backbone": "resnet18",
            "norm": "batch",
            "anchor_sizes": [8, 16, 32, 64, 128],
            "detections_per_image": 500,
            "fpn_channels": 128,
            "box_head_size": 256,
            "mask_head_channels": 64,
            "box_batch_size_per_image": 128,
            "rpn_pre_nms_top_n_train": 1000,
            "rpn_post_nms_top_n_train": 500,
            "rpn_pre_nms_top_n_test": 1000,
            "rpn_post_nms_top_n_test": 500,
        },
        train_batch_size=4,
        # its losses count every unannotated pixel as background
        learns_ignored_pixels=False,
    ),
}


def architecture(name: str) -> Architecture:
    """The record of ``name`` ("unet", "maskrcnn"), or a one-line error."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = " or ".join(ARCHITECTURES)
        raise ModelError(f"unknown architecture {name!r} (use {known})") from None


def architectures_for(task: str) -> list[str]:
    return [name for name, record in ARCHITECTURES.items() if record.task == task]

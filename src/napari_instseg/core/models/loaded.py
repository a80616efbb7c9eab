"""``LoadedModel``: a model on a device, ready for the engine, and
``build_model`` for a new one; what ``loading`` and the bioimage.io importer
both make."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..types import ModelError
from .architectures import architecture
from .info import ModelInfo

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class LoadedModel:
    """A model on a device, ready for the engine; pass it as ``model=`` to
    avoid even the cache lookup.

    ``tile_predictor`` replaces the architecture's (``Architecture.tile_predictor``)
    for this model: tests pass an oracle whose output is known exactly.
    """

    module: nn.Module
    info: ModelInfo
    device: torch.device
    # A faster copy for prediction (e.g. BatchNorm folded into convolutions),
    # made by load_model; models being trained leave it None.
    inference_module: nn.Module | None = None
    tile_predictor: Callable | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def check_task(self, task: str) -> None:
        """A ModelError naming the right function when this model does another task."""
        if self.info.task != task:
            from .architectures import SEMANTIC

            wanted = "segment_semantic" if self.info.task == SEMANTIC else "segment_instances"
            raise ModelError(f"{self.name} is a {self.info.task} model; use {wanted}")

    @property
    def predictor(self) -> nn.Module:
        """The module the prediction engine runs."""
        return self.inference_module if self.inference_module is not None else self.module

    def predict_tiles(self, *args, **kwargs):
        """Run the architecture's tile predictor (or this model's own) on a batch."""
        predictor = self.tile_predictor or architecture(self.info.architecture).tile_predictor()
        return predictor(self.predictor, *args, **kwargs)


def build_model(info: ModelInfo) -> nn.Module:
    """A randomly initialised model of the architecture and config in ``info``."""
    try:
        return architecture(info.architecture).build(dict(info.config))
    except TypeError as err:
        raise ModelError(f"model config does not fit {info.architecture}: {err}") from None

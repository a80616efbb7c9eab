"""What describes a model without loading it: ``ModelInfo`` (stored in every
checkpoint's metadata) and ``RegisteredModel`` (a registry entry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..types import ModelError
from .architectures import ARCHITECTURES, architecture


@dataclass
class ModelInfo:
    """What the engine needs to know to run a model, stored in its checkpoint."""

    name: str
    architecture: str  # a key of ARCHITECTURES: "unet" or "maskrcnn"
    config: dict  # keyword arguments of the builder
    class_names: list[str]  # index 0 is background
    in_channels: int = 3
    normalization: dict = field(default_factory=lambda: {"low": 1.0, "high": 99.8})
    tile_size: int = 512
    # typical object diameter (px) of the training images (core.diameter)
    object_diameter: float | None = None
    description: str = ""
    postprocess: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return architecture(self.architecture).task

    def to_metadata(self) -> dict:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: dict) -> ModelInfo:
        known = {f for f in cls.__dataclass_fields__}
        missing = {"name", "architecture", "config", "class_names"} - metadata.keys()
        if missing:
            raise ModelError(f"checkpoint metadata lacks {', '.join(sorted(missing))}")
        if metadata["architecture"] not in ARCHITECTURES:
            raise ModelError(f"unknown architecture {metadata['architecture']!r} in checkpoint")
        return cls(**{k: v for k, v in metadata.items() if k in known})


@dataclass
class RegisteredModel:
    """A registry entry: a one-line description and how to get the weights.

    ``source`` is the file the weights come from, when there is one: loaded
    models are cached by it and its modification time.
    """

    name: str
    description: str
    weights: Callable[[], tuple[dict, dict]]  # -> (state_dict, metadata)
    available: Callable[[], bool]
    architecture: str | None = None  # when known without loading
    metadata: Callable[[], dict] | None = None  # read without loading the weights
    source: Callable[[], object] | None = None  # -> path of the weights file

    @property
    def task(self) -> str | None:
        return None if self.architecture is None else architecture(self.architecture).task

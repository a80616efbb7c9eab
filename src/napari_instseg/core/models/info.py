"""What describes a model without loading it: ``ModelInfo`` (stored in every
checkpoint's metadata) and ``RegisteredModel`` (a registry entry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..types import ModelError
from .architectures import ARCHITECTURES, SEMANTIC, architecture

MIN_SIZE = 8  # pixels: the smallest object a class map gives, unless the model says
SEED_THRESHOLD = 0.5  # interior probability that seeds an object, unless the model says


@dataclass(frozen=True)
class InstanceRule:
    """How a U-Net's class map becomes instances (the keywords of
    ``labels.postprocess.instances_from_classes``), from the settings stored
    with the model."""

    instance_class: str  # the name of the objects' class, e.g. "nucleus"
    interior_class: int  # class index of object interiors
    boundary_class: int  # class index of boundaries (-1: none)
    seed_threshold: float
    min_size: int

    def keywords(self) -> dict:
        """The class indices and seed threshold, as keywords."""
        return {
            "interior_class": self.interior_class,
            "boundary_class": self.boundary_class,
            "seed_threshold": self.seed_threshold,
        }


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
    # typical object diameter (px) of the training images (core.engine.diameter)
    object_diameter: float | None = None
    # typical object diameter (px) of the images a model was fine-tuned for when
    # they were rescaled to ``object_diameter`` for training (the image series
    # does): predictions given neither diameter nor rescale use it
    images_diameter: float | None = None
    description: str = ""
    postprocess: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return architecture(self.architecture).task

    def instance_rule(self, min_size: int | None = None) -> InstanceRule:
        """The rule that turns this (semantic) model's class map into
        instances; ``min_size`` overrides the stored minimum size."""
        post, names = self.postprocess, self.class_names
        instance_class = post.get("instance_class", names[1])
        return InstanceRule(
            instance_class=instance_class,
            interior_class=names.index(instance_class),
            boundary_class=names.index("boundary") if "boundary" in names else -1,
            seed_threshold=float(post.get("seed_threshold", SEED_THRESHOLD)),
            min_size=int(post.get("min_size", MIN_SIZE) if min_size is None else min_size),
        )

    @property
    def result_class_names(self) -> list[str]:
        """The class names of the results this model gives: a semantic model's
        objects are all of its instance class."""
        if self.task == SEMANTIC:
            return ["background", self.instance_rule().instance_class]
        return list(self.class_names)

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

"""Plain result and progress types shared by the engine, CLI and widgets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Cancelled(Exception):
    """Raised by the engine when the caller's cancel check returned True."""


class ModelError(Exception):
    """A model name, checkpoint or weights file that cannot be used.

    The message is one sentence meant for the user (CLI, widget), not a traceback.
    """


class InputError(ValueError):
    """An image that the engine cannot segment, with a message for the user."""


@dataclass(frozen=True)
class Progress:
    """One step of a long computation: ``done`` of ``total`` units (tiles)."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class InstanceResult:
    """Instances found in an image (or a stack of images).

    ``labels`` has the image's spatial shape with any leading stack axes kept;
    0 is background and each instance has its own id. Per-instance arrays are
    aligned with ``label_ids``. ``boxes`` are ``(y_min, x_min, y_max, x_max)``
    in pixels with the max exclusive; for stacks ``stack_index`` gives the
    index of the slice (one row of ``np.unravel_index`` over the stack shape)
    that holds each instance. Linked stacks (``core.labels.linking``) keep one id
    per 3D object or track, so a label id then has one row per slice it is in.
    """

    labels: np.ndarray
    label_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: list[str]
    stack_index: np.ndarray | None = None
    # for results linked along time (core.labels.linking): napari's track_id, t, y, x
    tracks: np.ndarray | None = None
    # how the result was made: e.g. the diameter and rescale factor used
    metadata: dict = field(default_factory=dict)
    # pixels per row, when known without reading ``labels`` (block-wise
    # results whose labels were written to disk region by region)
    areas: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label_ids)

    def planes(self):
        """(stack index, 2D InstanceResult) per slice; ``((), self)`` for 2D."""
        if self.labels.ndim == 2:
            yield (), self
            return
        for flat, index in enumerate(np.ndindex(*self.labels.shape[:-2])):
            rows = self.stack_index == flat
            yield (
                index,
                InstanceResult(
                    labels=self.labels[index],
                    label_ids=self.label_ids[rows],
                    boxes=self.boxes[rows],
                    scores=self.scores[rows],
                    class_ids=self.class_ids[rows],
                    class_names=self.class_names,
                ),
            )

    @property
    def instance_class_names(self) -> list[str]:
        """The class name of each instance, aligned with ``label_ids``."""
        return [self.class_names[int(c)] for c in self.class_ids]


@dataclass
class SemanticResult:
    """A class map, the instances derived from it and optionally the class
    probabilities (``(C, *spatial)`` float32; None for very large images)."""

    classes: np.ndarray
    class_names: list[str]
    instances: InstanceResult
    probabilities: np.ndarray | None = field(default=None, repr=False)

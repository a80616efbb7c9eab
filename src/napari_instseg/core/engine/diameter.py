"""Object size: the typical diameter of objects in a label image, and the
rescale factor that brings a user's objects to the size a model was trained at.

A model stores the median (over its training images) of each image's median
object diameter (``ModelInfo.object_diameter``). ``diameter="auto"`` measures
the objects of a first pass at the input size and predicts again, rescaled,
only when they lie outside the band the model handles as they are
(``options.AUTO_DIAMETER_BAND``, 1/1.4 to 1.4 times the trained diameter, as
the training crops were scaled by 0.7-1.5), so most images need one pass. A
model fine-tuned on images rescaled to its trained size
(``ModelInfo.images_diameter``) brings new images to it by default, and its
"auto" first pass looks at that scale: at the input size such a model saw
100 px nuclei as 8-10 px fragments and "auto" enlarged them further.
"""

from __future__ import annotations

import math

import numpy as np

from ..types import InputError, ModelError
from . import options

MIN_OBJECTS = 3  # fewer objects say too little about their size


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter of the disc of the same area, per object of a label image."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    return np.sqrt(4 * areas / math.pi)


def typical_diameter(labels: np.ndarray) -> float | None:
    """The median object diameter in pixels, or None with too few objects."""
    diameters = equivalent_diameters(labels)
    return float(np.median(diameters)) if len(diameters) >= MIN_OBJECTS else None


def training_diameter(label_images) -> float | None:
    """A model's trained diameter: the median over images of their typical diameter."""
    typical = [d for d in map(typical_diameter, label_images) if d is not None]
    return round(float(np.median(typical)), 1) if typical else None


def check_request(diameter, rescale: float, trained: float | None, model: str):
    """``diameter`` checked against ``rescale`` and the model's trained size."""
    if diameter is None:
        return None
    if rescale != 1.0:
        raise InputError("give a diameter or a rescale factor, not both")
    if trained is None:
        raise ModelError(
            f"{model} does not store the object diameter it was trained at; "
            "use rescale= instead of diameter="
        )
    return options.parse_diameter(diameter)


def rescale_for(diameter: float, trained: float) -> float:
    """The factor that brings objects of ``diameter`` px to ``trained`` px."""
    return float(np.clip(trained / diameter, options.MIN_RESCALE, options.MAX_RESCALE))


def auto_rescale(measured: float | None, trained: float, looked_at: float = 1.0) -> float:
    """``looked_at`` (the scale of the pass that measured) while the measured
    diameter, seen at that scale, lies in the band the model handles, else
    the factor to the trained diameter."""
    if measured is None:
        return looked_at
    low, high = options.AUTO_DIAMETER_BAND
    if trained * low <= measured * looked_at <= trained * high:
        return looked_at
    return rescale_for(measured, trained)


class SlicePlan:
    """The scale each slice of one call is predicted at, and what was used.

    ``first_scale()`` gives the scale of a slice's (first) pass; with
    ``diameter="auto"``, ``second_scale(labels)`` measures the first pass and
    gives the scale of a second one, or None when none is needed.
    ``report()`` is what goes into ``result.metadata``.
    """

    def __init__(self, loaded, diameter, rescale: float, whole_image: bool = True):
        self.trained = loaded.info.object_diameter
        # the size of the images it was fine-tuned for (a block keeps the image's scale)
        default = loaded.info.images_diameter if whole_image else None
        if diameter is None and rescale == 1.0 and default:
            diameter = default
        self.diameter = check_request(diameter, rescale, self.trained, loaded.name)
        self.rescale = rescale
        # "auto" looks first where the model expects its images' objects
        self.auto_start = 1.0
        if self.diameter == "auto" and default:
            self.auto_start = rescale_for(default, self.trained)
        self.used: list[tuple[float | None, float]] = []  # (diameter, rescale) per slice

    def first_scale(self) -> float:
        if self.diameter is None:
            scale = self.rescale
        elif self.diameter == "auto":
            return self.auto_start
        else:
            scale = rescale_for(self.diameter, self.trained)
        self.used.append((self.diameter, scale))
        return scale

    def second_scale(self, first_labels: np.ndarray) -> float | None:
        if self.diameter != "auto":
            return None
        measured = typical_diameter(first_labels)
        scale = auto_rescale(measured, self.trained, self.auto_start)
        self.used.append((None if measured is None else round(measured, 1), scale))
        return None if scale == self.auto_start else scale

    def passes(self, run, objects_of):
        """Run a slice's passes: ``run(scale, again)`` is a generator predicting
        the slice at ``scale``; ``objects_of(output)`` gives its labels to measure.
        Returns the output of the last pass."""
        output = yield from run(self.first_scale(), False)
        second = self.second_scale(objects_of(output))
        if second is not None:
            output = yield from run(second, True)
        return output

    def report(self, stack_shape: tuple[int, ...]) -> dict:
        if self.diameter is None and self.rescale == 1.0:
            return {}
        diameters = [d for d, _ in self.used]
        scales = [round(s, 4) for _, s in self.used]
        report = {
            "diameter": diameters if stack_shape else diameters[0],
            "rescale": scales if stack_shape else scales[0],
            "trained_diameter": self.trained,
        }
        if self.diameter == "auto":
            report["diameter_mode"] = "auto"
        return report


def describe(metadata: dict) -> str:
    """A short phrase for the diameter and rescale used, for logs and messages."""
    if "rescale" not in metadata:
        return ""
    diameters, scales = metadata.get("diameter"), metadata["rescale"]
    if isinstance(scales, list):
        known = [d for d in diameters if d is not None] if isinstance(diameters, list) else []
        text = f"rescaled {min(scales):.2f}-{max(scales):.2f}x"
        return text + (f", median diameter {np.median(known):.1f} px" if known else "")
    mode = " (auto)" if metadata.get("diameter_mode") == "auto" else ""
    diameter = f"diameter {diameters:.1f} px{mode}, " if diameters is not None else ""
    return f"{diameter}rescaled {scales:.2f}x"

"""The two segmentation dock widgets: instance (Mask R-CNN) and semantic (U-Net).

What they share (reading the layer, running the engine in a thread worker,
putting result layers) is ``segmentation_base.SegmentationWidget``; each adds
its own controls here.
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, FloatSpinBox, SpinBox

from ..core.engine import options
from ..core.models.architectures import INSTANCE, SEMANTIC
from .segmentation_base import SegmentationWidget


class InstanceSegmentationWidget(SegmentationWidget):
    """Instance segmentation (Mask R-CNN): labels, boxes and scores."""

    task = INSTANCE

    def _task_controls(self):
        self.score_threshold = FloatSpinBox(
            label="Score threshold", min=0.0, max=1.0, step=0.05, value=options.SCORE_THRESHOLD
        )
        # lower paints each object larger, higher smaller
        self.mask_threshold = FloatSpinBox(
            label="Mask threshold", min=0.05, max=0.95, step=0.05, value=options.MASK_THRESHOLD
        )
        self.mask_threshold.tooltip = (
            "Mask probability counted as inside an object: lower grows objects, higher shrinks them"
        )
        self.show_scores = CheckBox(text="Show class and score on boxes", value=False)
        return [self.score_threshold, self.mask_threshold, self.show_scores]

    def _show_model_defaults(self, postprocess):
        # the thresholds chosen for the model on its training images, else 0.5
        self.score_threshold.value, self.mask_threshold.value = options.detection_thresholds(
            None, None, postprocess
        )

    def _engine_kwargs(self):
        return {
            "score_threshold": self.score_threshold.value,
            "mask_threshold": self.mask_threshold.value,
        }


class SemanticSegmentationWidget(SegmentationWidget):
    """Semantic segmentation (U-Net): class map plus derived instances."""

    task = SEMANTIC

    def _task_controls(self):
        # 0 keeps the size stored with the model (chosen when it was trained or tuned)
        self.min_size = SpinBox(
            label="Minimum object size (px, 0 = model's)", min=0, max=100000, value=0
        )
        return [self.min_size]

    def _engine_kwargs(self):
        return {"min_size": self.min_size.value or None}

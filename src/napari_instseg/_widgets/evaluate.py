"""The "Evaluate segmentation" dock widget: metrics of a predicted Labels
layer against a ground-truth one, and layers marking the errors."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton, Table

from .._layers import TAG
from ._common import WrappingLabel


class EvaluateWidget(Container):
    """Pick ground truth and prediction, click Evaluate; false positives and
    false negatives at the chosen IoU threshold become their own layers."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.ground_truth = ComboBox(label="Ground truth", choices=self._labels_layers)
        self.prediction = ComboBox(label="Prediction", choices=self._labels_layers)
        self.threshold = FloatSpinBox(
            label="IoU threshold", min=0.05, max=0.95, step=0.05, value=0.5
        )
        self.evaluate_button = PushButton(text="Evaluate")
        self.table = Table()
        self.status = WrappingLabel()
        self.extend(
            [
                self.ground_truth,
                self.prediction,
                self.threshold,
                self.evaluate_button,
                self.table,
                self.status,
            ]
        )
        self.evaluate_button.changed.connect(self.evaluate)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.ground_truth.reset_choices)
            event.connect(self.prediction.reset_choices)
        layers = self._labels_layers(None)
        if len(layers) >= 2:
            self.prediction.value = layers[-1]

    def _labels_layers(self, _widget):
        from napari.layers import Labels

        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and layer.metadata.get(TAG, {}).get("kind") != "errors"
        ]

    def evaluate(self) -> dict | None:
        """Fill the table (AP, precision, recall, F1, mean IoU, PQ per threshold)
        and add or update the error layers; returns the summary."""
        from ..core.labels.metrics import DEFAULT_THRESHOLDS, match_counts, match_instances

        truth, pred = self.ground_truth.value, self.prediction.value
        if truth is None or pred is None or truth is pred:
            self.status.value = "Error: choose two different Labels layers"
            return None
        if truth.data.shape != pred.data.shape:
            self.status.value = (
                f"Error: the layers differ in shape ({truth.data.shape} vs {pred.data.shape})"
            )
            return None
        true_data, pred_data = np.asarray(truth.data), np.asarray(pred.data)
        summary = match_counts(true_data, pred_data, DEFAULT_THRESHOLDS).summary()
        keys = ["ap", "precision", "recall", "f1", "mean_iou", "panoptic_quality"]
        columns = {"IoU": [f"{t:.2f}" for t in summary["thresholds"]]}
        for key, title in zip(keys, ["AP", "precision", "recall", "F1", "mean IoU", "PQ"]):
            columns[title] = [f"{v:.3f}" for v in summary[key]]
        self.table.value = columns
        match = match_instances(true_data, pred_data, self.threshold.value)
        self._show_errors(
            f"false positives ({pred.name})",
            pred,
            np.where(np.isin(pred_data, match.false_positives), pred_data, 0),
            "magenta",
        )
        self._show_errors(
            f"false negatives ({truth.name})",
            truth,
            np.where(np.isin(true_data, match.false_negatives), true_data, 0),
            "cyan",
        )
        self.status.value = (
            f"{summary['n_true']} true, {summary['n_pred']} predicted; at IoU "
            f"{self.threshold.value:.2f}: {len(match.false_positives)} false positives, "
            f"{len(match.false_negatives)} false negatives"
        )
        return summary

    def _show_errors(self, name, source, data, color):
        from napari.utils.colormaps import DirectLabelColormap

        kwargs = {
            "scale": source.scale,
            "translate": source.translate,
            "metadata": {TAG: {"kind": "errors"}},
            "colormap": DirectLabelColormap(color_dict={None: color, 0: "transparent"}),
            "opacity": 0.8,
        }
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if layer.metadata.get(TAG, {}).get("kind") == "errors":
                layer.data = data
                return layer
            name = f"{name} [new]"
        return self.viewer.add_labels(data, name=name, **kwargs)

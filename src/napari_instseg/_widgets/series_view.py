"""The image an Image series widget shows: its Image layer and its linked
Labels and Shapes layers, replaced when the user moves to another image, and
whether the user has edited the labels since they were shown or saved."""

from __future__ import annotations

import numpy as np

from .. import _layers
from .result_layers import link_boxes_and_labels
from .result_links import link_result, unlink_layer


class SeriesView:
    """The layers of the one image of a series on screen."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.layers: dict = {}  # "image", "labels", "boxes"
        self._snapshot: np.ndarray | None = None  # the labels as shown or last saved
        self._contrast = None  # (contrast limits, dtype) carried to the next image

    def show(self, series, index: int, image, channel_axis, model: str, device: str, message):
        """Replace the layers shown by image ``index`` of ``series`` with its
        saved labels (empty ones to paint on when it has none); drawn boxes
        are segmented with ``model``."""
        from ..core.series.folder import saved_result

        previous = self.layers.get("image")
        previous_shape = None if previous is None else previous.data.shape
        self.clear(keep_contrast=True)
        key = series.images[index].key
        image_layer = self.viewer.add_image(image, name=key)
        contrast = self._contrast
        if contrast is not None and not image_layer.rgb and contrast[1] == image_layer.dtype:
            image_layer.contrast_limits = contrast[0]
        labels = series.read_labels(index)
        spatial = image_layer.data.shape[:-1] if image_layer.rgb else image_layer.data.shape
        if channel_axis is not None:
            spatial = tuple(s for a, s in enumerate(spatial) if a != channel_axis)
        if labels is None:  # not segmented yet: paint or draw boxes from scratch
            labels = np.zeros(spatial, np.uint16)
        result = saved_result(labels, series.read_objects(index))
        names = {"model": model, "instances": f"{key} labels", "boxes": f"{key} boxes",
                 "show_text": False}  # fmt: skip
        tuples = _layers.result_layers("instance", image_layer, result, (), channel_axis, names)
        labels_layer = self.viewer.add_labels(tuples[0][0], **tuples[0][1])
        boxes_layer = self.viewer.add_shapes(tuples[1][0], **tuples[1][1])
        link_boxes_and_labels(labels_layer, boxes_layer)
        if labels_layer.data.ndim == boxes_layer.ndim:
            options = {"model": model, "device": device}
            link_result(self.viewer, labels_layer, boxes_layer, image_layer, channel_axis, (),
                        options, message)  # fmt: skip
        self.viewer.layers.selection.active = labels_layer
        self.layers = {"image": image_layer, "labels": labels_layer, "boxes": boxes_layer}
        self._snapshot = np.array(labels_layer.data, copy=True)
        if image_layer.data.shape != previous_shape:  # a new size: show it whole
            self.viewer.reset_view()

    def clear(self, keep_contrast: bool = False) -> None:
        """Remove the layers shown (their link first)."""
        image = self.layers.get("image")
        self._contrast = None
        if keep_contrast and image is not None and not image.rgb:
            self._contrast = (tuple(image.contrast_limits), image.dtype)
        for name in ("boxes", "labels", "image"):
            layer = self.layers.get(name)
            if layer is not None and layer in self.viewer.layers:
                unlink_layer(layer)
                self.viewer.layers.remove(layer)
        self.layers = {}
        self._snapshot = None

    def labels(self) -> np.ndarray | None:
        """A copy of the labels shown."""
        layer = self.layers.get("labels")
        return None if layer is None else np.array(layer.data, copy=True)

    def edited(self) -> bool:
        """Whether the labels shown differ from what was loaded or last saved."""
        layer = self.layers.get("labels")
        if layer is None or self._snapshot is None:
            return False
        return not np.array_equal(np.asarray(layer.data), self._snapshot)

    def saved(self, labels: np.ndarray) -> None:
        """The labels shown are now those on disk."""
        self._snapshot = labels

    def object_table(self, labels: np.ndarray) -> dict:
        """The objects' table of edited labels, keeping the classes and scores
        the boxes carry (objects painted by hand score 1)."""
        from ..core.io.tables import object_table
        from ..core.series.folder import saved_result

        features = self.layers["boxes"].features
        known = {}
        if "label_id" in features:
            for label_id, name, score in zip(
                features["label_id"], features.get("class_name", []), features.get("score", [])
            ):
                known[int(label_id)] = (str(name), float(score))
        return object_table(saved_result(labels, known))

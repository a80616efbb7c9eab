"""The image an Image series widget shows: its Image layer and its linked
Labels and Shapes layers, replaced when the user moves to another image, and
whether the user has edited the labels since they were shown or saved."""

from __future__ import annotations

import numpy as np

from .. import _layers
from ..core.models.architectures import INSTANCE
from .result_layers import link_boxes_and_labels, update_layer
from .result_links import link_result, unlink_layer


class SeriesView:
    """The layers of the one image of a series on screen."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.layers: dict = {}  # "image", "labels", "boxes"
        self._channel_axis = None  # of the image shown
        self._snapshot: np.ndarray | None = None  # the labels as shown or last saved

    def show(self, series, index: int, image, channel_axis, model: str, device: str, message):
        """Show image ``index`` of ``series`` with its saved labels (empty ones
        to paint on when it has none); drawn boxes are segmented with
        ``model``. The layers are reused from image to image: napari's removing
        a layer runs a full garbage collection (0.3 s each here)."""
        image_layer = self._image_layer(image, series.images[index].key)
        self._channel_axis = channel_axis
        self.show_result(series, index, model, device, message, image_layer)

    def show_result(self, series, index: int, model: str, device: str, message, image_layer=None):
        """Replace the labels and boxes of image ``index`` (the one on screen:
        its Image layer stays as it is, e.g. when its result arrives)."""
        from ..core.series.folder import saved_result

        key = series.images[index].key
        channel_axis = self._channel_axis
        if image_layer is None:
            image_layer = self.layers["image"]
            for name in ("labels", "boxes"):  # their link is made again below
                unlink_layer(self.layers[name])
        labels = series.read_labels(index)
        spatial = image_layer.data.shape[:-1] if image_layer.rgb else image_layer.data.shape
        if channel_axis is not None:
            spatial = tuple(s for a, s in enumerate(spatial) if a != channel_axis)
        if labels is None:  # not segmented yet: paint or draw boxes from scratch
            labels = np.zeros(spatial, np.uint16)
        result = saved_result(labels, series.read_objects(index))
        names = {"model": model, "instances": f"{key} labels", "boxes": f"{key} boxes",
                 "show_text": False}  # fmt: skip
        tuples = _layers.result_layers(INSTANCE, image_layer, result, (), channel_axis, names)
        labels_layer, boxes_layer = self._result_layers(tuples)
        if labels_layer.data.ndim == boxes_layer.ndim:
            options = {"model": model, "device": device}
            link_result(self.viewer, labels_layer, boxes_layer, image_layer, channel_axis, (),
                        options, message)  # fmt: skip
        self.viewer.layers.selection.active = labels_layer
        self._snapshot = np.array(labels_layer.data, copy=True)

    def _image_layer(self, image, name: str):
        """The image layer, its data replaced (a new layer for another kind of image)."""
        layer = self.layers.get("image")
        fits = layer is not None and layer in self.viewer.layers
        if fits:  # napari's own guess: a last axis of 3 or 4 is RGB(A)
            rgb = image.ndim >= 3 and image.shape[-1] in (3, 4)
            fits = rgb == layer.rgb and image.ndim == layer.data.ndim
        if not fits:
            self.clear()
            layer = self.viewer.add_image(image, name=name)
            self.layers["image"] = layer
            self.viewer.reset_view()
            return layer
        contrast, shape = tuple(layer.contrast_limits), layer.data.shape
        for key in ("labels", "boxes"):  # their link reads the old image: stop it first
            if key in self.layers:
                unlink_layer(self.layers[key])
        layer.data, layer.name = image, name
        if not layer.rgb and np.dtype(layer.dtype) == image.dtype:
            layer.contrast_limits = contrast  # carried over from the image before
        if image.shape != shape:  # a new size: show it whole
            self.viewer.reset_view()
        return layer

    def _result_layers(self, tuples):
        """The labels and boxes layers, updated in place, or made the first time."""
        (labels_data, labels_kwargs, _), (boxes_data, boxes_kwargs, _) = tuples[:2]
        labels_layer, boxes_layer = self.layers.get("labels"), self.layers.get("boxes")
        reuse = (
            labels_layer is not None
            and labels_layer in self.viewer.layers
            and boxes_layer in self.viewer.layers
            and labels_layer.data.ndim == np.ndim(labels_data)
        )
        if reuse:  # the same image layer underneath: its geometry is theirs already
            keep = ("features", "metadata", "edge_color", "shape_type")
            update_layer(labels_layer, labels_data, {k: labels_kwargs[k] for k in keep
                                                     if k in labels_kwargs})  # fmt: skip
            update_layer(boxes_layer, boxes_data, {k: boxes_kwargs[k] for k in keep
                                                   if k in boxes_kwargs})  # fmt: skip
            labels_layer.name, boxes_layer.name = labels_kwargs["name"], boxes_kwargs["name"]
        else:
            for layer in (labels_layer, boxes_layer):
                if layer is not None and layer in self.viewer.layers:
                    unlink_layer(layer)
                    self.viewer.layers.remove(layer)
            labels_layer = self.viewer.add_labels(labels_data, **labels_kwargs)
            boxes_layer = self.viewer.add_shapes(boxes_data, **boxes_kwargs)
            link_boxes_and_labels(labels_layer, boxes_layer)
        self.layers.update(labels=labels_layer, boxes=boxes_layer)
        return labels_layer, boxes_layer

    def clear(self) -> None:
        """Remove the layers shown (their link first)."""
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

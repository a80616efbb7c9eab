"""Result layers of the segmentation widgets, and the re-run policy that
never destroys a user's work.

A result layer made by a widget is updated in place only while its data is
untouched since it was written. If the user edited it, renamed it or removed
it, a new layer is added instead ("... [new]"), and the edited one is left
as it is.
"""

from __future__ import annotations

import numpy as np


class ResultLayerWriter:
    """Puts one widget's result layers into a viewer, remembering what it wrote."""

    def __init__(self, viewer):
        self.viewer = viewer
        self._written: dict[str, _WrittenLayer] = {}  # result layers this widget made

    def put(self, layer_tuple):
        """Add a result layer, or update the one written before while the user
        has not edited it; returns the layer."""
        data, kwargs, kind, *built = layer_tuple
        name = kwargs["name"]
        previous = self._written.get(name)
        if previous is not None and not previous.edited:
            layer = previous.layer
            if layer in self.viewer.layers and layer.name == previous.name:
                # untouched since we wrote it: update in place (keeps its
                # position in the layer list and the user's display settings)
                with previous.writing():
                    update_layer(layer, data, kwargs)
                return layer
        if name in self.viewer.layers:  # edited by the user, or not ours: keep it
            kwargs = {**kwargs, "name": f"{name} [new]"}
        if built:  # made in the worker
            layer = built[0]
            layer.name = kwargs["name"]
            self.viewer.add_layer(layer)
        else:
            layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self._written[name] = _WrittenLayer(layer)
        return layer


def with_built_layers(tuples) -> list:
    """Shapes layer tuples extended with the layer made from them (no Qt: safe
    in a worker). The tuple is kept for updating an existing layer. Labels
    layers are cheap to make on the main thread, and making the first one of a
    session in a worker held the interpreter's lock for 0.1-0.3 s (imports)."""
    from napari.layers import Shapes

    return [(*t, Shapes(t[0], **t[1])) if t[2] == "shapes" else t for t in tuples]


class _WrittenLayer:
    """A result layer and whether the user changed it since we wrote it.

    Watching napari's events (painting, filling, erasing, new data, renaming,
    moving shapes) costs nothing, unlike comparing large arrays.
    """

    def __init__(self, layer):
        self.layer = layer
        self.edited = False
        self._ours = False
        self.name = layer.name  # the name it was given (maybe "... [new]")
        # not "set_data": napari emits it on every refresh (moving a slider)
        for name in ("paint", "data", "name"):
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(self._on_change)

    def _on_change(self, event=None):
        if not self._ours:
            self.edited = True

    def writing(self):
        from contextlib import contextmanager

        @contextmanager
        def ours():
            self._ours = True
            try:
                yield
            finally:
                self._ours = False

        return ours()


def update_layer(layer, data, kwargs) -> None:
    if "shape_type" in kwargs:
        # napari gives new shapes the type of the layer's shapes, and "polygon"
        # when it had none: boxes would become polygons whose corners move apart
        layer.data = (data, [kwargs["shape_type"]] * len(data))
    else:
        layer.data = data
    for key in ("scale", "translate", "rotate", "shear", "affine", "features", "metadata"):
        if key in kwargs:
            setattr(layer, key, kwargs[key])
    if len(data) and "edge_color" in kwargs:
        layer.edge_color = kwargs["edge_color"]
    if "text" in kwargs:
        layer.text = kwargs["text"]


def link_boxes_and_labels(labels, boxes) -> None:
    """Selecting a box highlights its instance; picking a label selects its box."""
    if "label_id" not in boxes.features:
        return
    busy = []

    def on_box_selection(*_):
        if busy:
            return
        selected = list(boxes.selected_data)
        busy.append(True)
        try:
            if len(selected) == 1:
                labels.selected_label = int(boxes.features["label_id"].iloc[selected[0]])
                labels.show_selected_label = True
            else:
                labels.show_selected_label = False
        finally:
            busy.clear()

    def on_label_selected(*_):
        if busy:
            return
        rows = np.flatnonzero(boxes.features["label_id"].to_numpy() == labels.selected_label)
        busy.append(True)
        try:
            boxes.selected_data = set(rows.tolist())
        finally:
            busy.clear()

    boxes.selected_data.events.items_changed.connect(on_box_selection)
    labels.events.selected_label.connect(on_label_selected)

"""The Curate labels dock widget: merge, split, remove small objects, fill
holes and relabel an instances layer, each undoable with napari's undo on
the Labels layer (Ctrl+Z there, or Undo here).

The edits are computed by ``core.labels.curation`` and written with
``Labels.data_setitem``; when the layer is a linked result
(``linked_layers``), its boxes and features follow.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox

from ..core.labels import curation
from ..core.types import InputError
from . import result_links
from ._common import WrappingLabel
from .result_links import link_of

SPLIT_POINTS = "split points"


class CurationWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.labels_layer = ComboBox(label="Labels", choices=self._labels_layers)
        self.follow = CheckBox(text="Boxes follow the labels", value=True)
        self.merge_button = PushButton(text="Merge selected boxes")
        self.points_button = PushButton(text="Place split points")
        self.split_button = PushButton(text="Split at the points")
        self.min_size = SpinBox(label="Smallest object (px)", min=1, max=100000, value=30)
        self.remove_button = PushButton(text="Remove smaller objects")
        self.fill_button = PushButton(text="Fill holes")
        self.relabel_button = PushButton(text="Relabel 1..N")
        self.undo_button = PushButton(text="Undo")
        self.redo_button = PushButton(text="Redo")
        self.status = WrappingLabel()
        self.extend(
            [
                self.labels_layer,
                self.follow,
                self.merge_button,
                self.points_button,
                self.split_button,
                self.min_size,
                self.remove_button,
                self.fill_button,
                self.relabel_button,
                self.undo_button,
                self.redo_button,
                self.status,
            ]
        )
        actions = {
            self.merge_button: self.merge_selected,
            self.points_button: self.place_split_points,
            self.split_button: self.split_at_points,
            self.remove_button: self.remove_small,
            self.fill_button: self.fill_holes,
            self.relabel_button: self.relabel,
            self.undo_button: lambda: self._history("undo"),
            self.redo_button: lambda: self._history("redo"),
        }
        for button, action in actions.items():
            button.changed.connect(lambda *_, action=action: self._run(action))
        self.follow.changed.connect(self._on_follow_changed)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.labels_layer.reset_choices)

    def _labels_layers(self, _widget) -> list:
        from napari.layers import Labels

        from .._layers import TAG

        layers = [layer for layer in self.viewer.layers if isinstance(layer, Labels)]
        # instances first: the layers this plugin made
        return sorted(layers, key=lambda la: la.metadata.get(TAG, {}).get("kind") != "instances")

    def _run(self, action) -> None:
        self.status.value = ""
        try:
            message = action()
        except InputError as err:
            self.status.value = f"Error: {err}"
            return
        if message:
            self.status.value = message

    def _layer(self):
        layer = self.labels_layer.value
        if layer is None:
            raise InputError("open a Labels layer first")
        return layer

    def _write(self, layer, edit, what: str) -> str:
        index, values = edit
        if not len(index[0]):
            return f"{what}: nothing to change."
        layer.data_setitem(index, values)
        return f"{what}: {len(index[0])} pixels changed (Undo takes it back)."

    # --- actions ----------------------------------------------------------------------
    def merge_selected(self) -> str:
        layer = self._layer()
        link = link_of(layer)
        if link is None:
            raise InputError("merging picks objects by their boxes: use a linked result layer")
        rows = sorted(link.boxes.selected_data)
        ids = link.boxes.features["label_id"].to_numpy()[rows] if rows else []
        if len(set(int(i) for i in ids)) < 2:
            raise InputError("select two or more boxes (shift-click) to merge")
        return self._write(layer, curation.merge(layer.data, ids), "Merged")

    def place_split_points(self) -> str:
        layer = self._layer()
        if SPLIT_POINTS in self.viewer.layers:
            points = self.viewer.layers[SPLIT_POINTS]
        else:
            points = self.viewer.add_points(
                name=SPLIT_POINTS, ndim=layer.ndim, size=6, face_color="yellow",
                scale=layer.scale, translate=layer.translate,
            )  # fmt: skip
        self.viewer.layers.selection.active = points
        points.mode = "add"
        return "Click two points on the object to split, then Split at the points."

    def split_at_points(self) -> str:
        layer = self._layer()
        if SPLIT_POINTS not in self.viewer.layers:
            raise InputError("place split points first")
        points = self.viewer.layers[SPLIT_POINTS]
        coords = [layer.world_to_data(points.data_to_world(p)) for p in points.data]
        if len(coords) < 2:
            raise InputError("place two points on the object to split")
        coords = np.round(np.asarray(coords)).astype(int)
        plane = tuple(coords[0, :-2])
        if any(tuple(c[:-2]) != plane for c in coords):
            raise InputError("put every split point in the same slice")
        planar = layer.data[plane] if plane else layer.data
        # along the object's own shape (its distance map): the same for bright
        # and dark nuclei, whatever image lies under it
        index, values = curation.split(
            np.asarray(planar), coords[:, -2:], new_id=self._next_id(layer)
        )
        index = (*(np.full(len(index[0]), p) for p in plane), *index)
        message = self._write(layer, (index, values), "Split")
        points.data = np.zeros((0, layer.ndim))
        return message

    def remove_small(self) -> str:
        layer = self._layer()
        return self._write(layer, curation.remove_small(layer.data, self.min_size.value), "Removed")

    def fill_holes(self) -> str:
        layer = self._layer()
        return self._write(layer, curation.fill_holes(layer.data), "Filled")

    def relabel(self) -> str:
        layer = self._layer()
        edit, mapping = curation.relabel_consecutive(np.asarray(layer.data))
        link = link_of(layer)
        if link is not None and mapping:
            link.rename(mapping)
        return self._write(layer, edit, f"Relabelled {len(mapping)} objects")

    def _history(self, step: str) -> str:
        layer = self._layer()
        getattr(layer, step)()
        link = link_of(layer)
        if link is not None:
            link.resync()
        return ""

    def _on_follow_changed(self, value: bool) -> None:
        layer = self.labels_layer.value
        link = link_of(layer) if layer is not None else None
        if link is None and layer is not None:
            link = result_links.any_link_of(layer)
        if link is not None:
            link.relink() if value else link.unlink()

    # --- helpers ----------------------------------------------------------------------
    def _next_id(self, layer) -> int:
        known = int(np.asarray(layer.data).max())
        if "label" in layer.features and len(layer.features):
            known = max(known, int(layer.features["label"].max()))
        return known + 1

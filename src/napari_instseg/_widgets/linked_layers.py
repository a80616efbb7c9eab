"""A result's Labels and Shapes layers kept in step while the user edits them.

- Deleting a box removes its object from the labels and the features.
- Drawing a rectangle segments inside it (``core.engine.prompts``): a new object
  with a new id, its box snapped to the object, a features row.
- Moving or resizing a box segments that object again in the new box.
- Painting, erasing or filling labels moves, removes or adds the boxes of the
  objects touched.

Label edits go through ``Labels.data_setitem``, so napari's undo on the
Labels layer takes them back; Ctrl+Z / Ctrl+Shift+Z there also bring the
boxes back in step. Segmenting runs in a thread worker; the main thread only
writes the few pixels and rows that changed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .box_tables import (
    box_vertices,
    boxes_of_objects,
    drop_feature_rows,
    move_boxes,
    plane_index,
    rows_for,
    upsert_feature_row,
    vertices_box,
)


class LinkedResultLayers:
    """Links one run's ``labels`` and ``boxes``; ``segment(plane_index, boxes)``
    returns a ``BoxSegment`` or None per box (run in a worker unless
    ``threaded`` is False). ``message(text)`` tells the user what happened."""

    def __init__(
        self,
        labels,
        boxes,
        segment: Callable,
        intensity: Callable | None = None,
        message: Callable[[str], None] = print,
        default_class: str = "nucleus",
        threaded: bool = True,
    ):
        self.labels, self.boxes = labels, boxes
        self.segment, self.intensity, self.message = segment, intensity, message
        self.default_class = default_class
        self.threaded = threaded
        self.linked = True
        self._busy = False
        self._removing: list[tuple[tuple, int]] = []
        self._rows = len(boxes.data)
        self.pending = 0  # boxes being segmented
        self._touched: set[tuple[tuple, int]] = set()
        self._follow(True)
        for key, step in (("Control-z", "undo"), ("Control-Shift-z", "redo")):
            labels.bind_key(key, self._history(step), overwrite=True)

    def unlink(self) -> None:
        """Stop following edits (the layers stay as they are)."""
        if not self.linked:
            return
        self.linked = False
        self._follow(False)

    def relink(self) -> None:
        """Follow edits again, after bringing the boxes in step with the labels."""
        if self.linked:
            return
        self.linked = True
        self._follow(True)
        self.resync()

    def _follow(self, on: bool) -> None:
        """Connect to (or disconnect from) the two layers' edit events."""
        # napari emits "paint" before it writes the pixels, "labels_update" after
        pairs = (
            (self.boxes.events.data, self._on_boxes_changed),
            (self.labels.events.paint, self._on_paint),
            (self.labels.events.labels_update, self._on_labels_written),
        )
        for emitter, handler in pairs:
            emitter.connect(handler) if on else emitter.disconnect(handler)

    @property
    def stack_ndim(self) -> int:
        return self.labels.data.ndim - 2

    # --- boxes -> labels ----------------------------------------------------------------
    def _on_boxes_changed(self, event) -> None:
        if self._busy or not self.linked:
            return
        action = str(event.action)
        if action.endswith("removing"):
            self._removing = self._row_keys(event.data_indices)
        elif action.endswith("removed"):
            removed, self._removing = self._removing, []
            self._rows = len(self.boxes.data)
            for plane, label_id in removed:
                self._erase(plane, label_id)
            self._forget([label_id for _, label_id in removed])
        elif action.endswith("added"):
            new_rows = list(range(self._rows, len(self.boxes.data)))
            self._rows = len(self.boxes.data)
            next_id = self._next_id()
            features = self.boxes.features.copy()
            features.loc[features.index[new_rows], "label_id"] = range(
                next_id, next_id + len(new_rows)
            )
            self._busy = True
            try:
                self.boxes.features = features
            finally:
                self._busy = False
            self._segment_rows(new_rows)
        elif action.endswith("changed") and len(self.boxes.data) == self._rows:
            rows = [i for i in event.data_indices if 0 <= i < self._rows]
            self._segment_rows(rows, again=True)

    def _row_keys(self, rows) -> list[tuple[tuple, int]]:
        """(plane, label id) of Shapes rows (napari builds ``data`` on each access)."""
        data, ids = self.boxes.data, self.boxes.features["label_id"].to_numpy()
        return [(plane_index(data[r], self.stack_ndim), int(ids[r])) for r in rows]

    def _row_key(self, row: int) -> tuple[tuple, int]:
        return self._row_keys([row])[0]

    def _segment_rows(self, rows: list[int], again: bool = False) -> None:
        data = self.boxes.data
        jobs = [
            (plane, label_id, vertices_box(data[row]))
            for row, (plane, label_id) in zip(rows, self._row_keys(rows))
        ]
        if not jobs:
            return
        self.pending += len(jobs)

        def work():
            return [(plane, label_id, self.segment(plane, box)) for plane, label_id, box in jobs]

        def apply(results):
            self.pending -= len(jobs)
            self._apply_segments(results, again)

        if not self.threaded:
            apply(work())
            return
        from napari.qt.threading import create_worker

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(apply)
        worker.errored.connect(lambda err: self._failed(len(jobs), err))
        worker.start()

    def _failed(self, n: int, err: Exception) -> None:
        from ._common import error_message

        self.pending -= n
        self.message(f"Error: {error_message(err)}")

    def _apply_segments(self, results, again: bool) -> None:
        """Paint the objects found (on the main thread) and snap their boxes."""
        empty, found_values = [], {}
        for plane, label_id, found in results:
            if again:
                self._erase(plane, label_id)
            if found is None:
                empty.append((plane, label_id))
                continue
            ys, xs = found.pixels()
            free = self.labels.data[plane][ys, xs] == 0  # never paint over another object
            if not free.any():
                empty.append((plane, label_id))
                continue
            index = (*(np.full(int(free.sum()), p) for p in plane), ys[free], xs[free])
            self._set_labels(index, label_id)
            found_values[label_id] = {"class_name": found.class_name, "score": found.score}
            self._write_box_features((plane, label_id), found_values[label_id])
        if empty:
            self._remove_boxes(empty)
            self._forget([label_id for _, label_id in empty])
            noun = "box" if len(empty) == 1 else "boxes"
            self.message(f"No object found in {len(empty)} {noun}; removed.")
        self.resync([(plane, label_id) for plane, label_id, _ in results], found_values)

    # --- labels -> boxes ----------------------------------------------------------------
    def _on_paint(self, event) -> None:
        if self._busy or not self.linked:
            return
        touched: set[tuple[tuple, int]] = set()
        for atom in event.value:
            if hasattr(atom, "slice_key"):
                planes = [tuple(s.start for s in atom.slice_key[: self.stack_ndim])]
                old, new = atom.old_values, atom.new_value
            else:
                index, old, new = atom
                stacked = np.stack(index[: self.stack_ndim], 1) if self.stack_ndim else None
                planes = [()] if stacked is None else [tuple(p) for p in np.unique(stacked, axis=0)]
            ids = {int(v) for v in np.unique(old)} | {int(v) for v in np.unique(new)}
            touched.update((plane, i) for plane in planes for i in ids if i)
        self._touched |= touched

    def _on_labels_written(self, event=None) -> None:
        if self._touched and not self._busy:
            touched, self._touched = self._touched, set()
            self.resync(sorted(touched))

    def resync(self, objects=None, values: dict | None = None) -> None:
        """Boxes and features follow the labels for ``objects`` ((plane, id)
        pairs), or for every object (after undo or redo); ``values`` adds
        features columns per label id (e.g. a painted object's class and score)."""
        stack_ndim = self.stack_ndim
        ids = self.boxes.features["label_id"].to_numpy().astype(np.int64)
        data = self.boxes.data  # napari builds this list on every access
        keys = [(plane_index(v, stack_ndim), int(i)) for v, i in zip(data, ids)]
        if objects is None:
            targets = set(keys) | set(boxes_of_objects(self.labels.data))
        else:
            targets = {(tuple(p), int(i)) for p, i in objects}
        found = boxes_of_objects(self.labels.data, targets)
        moved, vanished = {}, []
        for row, key in enumerate(keys):
            if key not in targets:
                continue
            box = found.pop(key, None)
            if box is None:
                vanished.append(key)
            elif np.any(vertices_box(data[row]) != np.asarray(box, float)):
                moved[row] = box_vertices(key[0], box)
        self._busy = True
        try:
            if moved:
                move_boxes(self.boxes, moved)
            if found:  # objects without a box: painted with a new id
                self._add_boxes(found)
        finally:
            self._busy = False
        self._remove_boxes(vanished)
        present = {label_id for _, label_id in boxes_of_objects(self.labels.data)}
        self._drop_features({label_id for _, label_id in targets} - present)
        for label_id in sorted({label_id for _, label_id in targets} & present):
            self._write_features(label_id, (values or {}).get(label_id, {}))
        self._rows = len(self.boxes.data)

    def rename(self, mapping: dict[int, int]) -> None:
        """Carry ids renamed in the labels (``{old: new}``) into both tables;
        call before writing the renamed pixels."""
        self._busy = True
        try:
            for layer, columns in ((self.boxes, ("label_id",)), (self.labels, ("label", "index"))):
                features = layer.features.copy()
                for column in columns:
                    if column in features:
                        features[column] = features[column].map(lambda v: mapping.get(int(v), v))
                layer.features = features
        finally:
            self._busy = False

    # --- writing --------------------------------------------------------------------------
    def _add_boxes(self, found: dict) -> None:
        start = len(self.boxes.data)
        self.boxes.add_rectangles([box_vertices(p, b) for (p, _), b in found.items()])
        features = self.boxes.features.copy()
        rows = features.index[start:]
        features.loc[rows, "label_id"] = [label_id for _, label_id in found]
        features.loc[rows, "class_name"] = self.default_class
        features.loc[rows, "score"] = 1.0  # drawn by hand
        self.boxes.features = features

    def _write_box_features(self, key, values: dict) -> None:
        rows = rows_for(self.boxes, [key], self.stack_ndim)
        if rows:
            features = self.boxes.features.copy()
            for column, value in values.items():
                features.loc[features.index[rows], column] = value
            self.boxes.features = features

    def _remove_boxes(self, keys) -> None:
        rows = rows_for(self.boxes, keys, self.stack_ndim) if keys else []
        if not rows:
            return
        self._busy = True
        try:
            self.boxes.remove(rows)  # not through the selection: it sets the brush's label
        finally:
            self._busy = False
        self._rows = len(self.boxes.data)

    def _erase(self, plane: tuple, label_id: int) -> None:
        ys, xs = np.nonzero(self.labels.data[plane] == label_id)
        if len(ys):
            self._set_labels((*(np.full(len(ys), p) for p in plane), ys, xs), 0)

    def _set_labels(self, index, value: int) -> None:
        self._busy = True
        try:
            self.labels.data_setitem(index, value)
        finally:
            self._busy = False

    def _next_id(self) -> int:
        known = [int(self.labels.data.max()), 0]
        for table, column in ((self.boxes.features, "label_id"), (self.labels.features, "label")):
            if column in table and len(table):
                known.append(int(np.nanmax(table[column].to_numpy(float))))
        return max(known) + 1

    def _forget(self, ids) -> None:
        """Features of objects edited away: dropped where an id is gone from
        every slice, updated where a linked object lives on in others."""
        present = {int(i) for i in np.unique(self.labels.data)}
        self._drop_features([i for i in ids if i not in present])
        for label_id in sorted({int(i) for i in ids} & present):
            self._write_features(label_id, {})

    def _drop_features(self, ids) -> None:
        self.labels.features = drop_feature_rows(self.labels.features, ids)

    def _write_features(self, label_id: int, values: dict) -> None:
        mask = self.labels.data == label_id
        # a linked stack's table counts voxels over the stack as "volume"
        size = "volume" if "volume" in self.labels.features else "area"
        values = {size: int(mask.sum()), **values}
        if self.intensity is not None:
            image = self.intensity()
            if image is not None and image.shape[: mask.ndim] == mask.shape:
                gray = image if image.ndim == mask.ndim else image.mean(-1)
                values["mean_intensity"] = float(gray[mask].mean()) if mask.any() else 0.0
        self.labels.features = upsert_feature_row(self.labels.features, label_id, values)

    def _history(self, step: str):
        def run(layer):
            getattr(layer, step)()
            self.resync()

        return run

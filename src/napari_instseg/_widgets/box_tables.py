"""Boxes as the Shapes layer holds them, and the Labels features table:
small conversions that ``linked_layers`` and ``curation`` share (no Qt).

A box is ``(y_min, x_min, y_max, x_max)`` in pixels with the max exclusive;
its rectangle's corners sit on pixel edges (``-0.5``), with the slice
coordinates of a stack first, as ``_layers.boxes_layer`` writes them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def plane_index(vertices, stack_ndim: int) -> tuple[int, ...]:
    """The slice (leading coordinates) a rectangle lies in."""
    vertices = np.asarray(vertices)
    return tuple(int(round(v)) for v in vertices[0, :stack_ndim])


def vertices_box(vertices) -> np.ndarray:
    """A rectangle's box, from its corners (drawn or written by us)."""
    corners = np.asarray(vertices, float)[:, -2:]
    return np.concatenate([corners.min(0) + 0.5, corners.max(0) + 0.5])


def box_vertices(plane: tuple[int, ...], box) -> np.ndarray:
    y0, x0, y1, x1 = (float(v) - 0.5 for v in box)
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
    if not plane:
        return corners
    return np.concatenate([np.tile(np.asarray(plane, float), (4, 1)), corners], axis=1)


def boxes_of_objects(labels: np.ndarray, objects=None) -> dict:
    """``{(plane, label id): box}`` of the objects present: of all objects, or
    of the ``(plane, id)`` pairs in ``objects`` (those absent are left out)."""
    stack_shape = labels.shape[:-2]
    if objects is None:
        planes = {index: None for index in np.ndindex(*stack_shape)}
    else:
        planes: dict[tuple, set | None] = {}
        for plane, label_id in objects:
            planes.setdefault(tuple(plane), set()).add(int(label_id))
    found = {}
    for plane, wanted in planes.items():
        image = labels[plane]
        top = int(image.max()) if wanted is None else max(wanted)
        if top <= 0:
            continue
        for label_id, where in enumerate(ndimage.find_objects(image, max_label=top), start=1):
            if where is None or (wanted is not None and label_id not in wanted):
                continue
            ys, xs = where
            found[(plane, label_id)] = (ys.start, xs.start, ys.stop, xs.stop)
    return found


def rows_for(boxes, keys, stack_ndim: int) -> list[int]:
    """Rows of the Shapes layer holding the ``(plane, label id)`` ``keys``."""
    keys = {(tuple(p), int(i)) for p, i in keys}
    ids = boxes.features["label_id"].to_numpy()
    return [
        row
        for row, (vertices, label_id) in enumerate(zip(boxes.data, ids))
        if (plane_index(vertices, stack_ndim), int(label_id)) in keys
    ]


def drop_feature_rows(features, ids):
    """The Labels features without the rows of ``ids``."""
    ids = {int(i) for i in ids}
    if not ids or "label" not in features:
        return features
    keep = ~features["label"].isin(ids)
    return features[keep].reset_index(drop=True)


def upsert_feature_row(features, label_id: int, values: dict):
    """The Labels features with ``values`` written into the row of
    ``label_id``, which is added (other columns empty) if missing."""
    import pandas as pd

    features = features.copy()
    if "label" not in features:
        features["label"] = pd.Series(dtype=np.int64)
        features["index"] = pd.Series(dtype=np.int64)
    rows = np.flatnonzero(features["label"].to_numpy() == label_id)
    if not len(rows):
        new = pd.DataFrame([{"index": label_id, "label": label_id, **values}])
        return pd.concat([features, new], ignore_index=True)
    for column, value in values.items():
        if column not in features:
            features[column] = np.nan
        features.loc[features.index[rows[0]], column] = value
    return features


def move_boxes(boxes, moved: dict) -> None:
    """Give rows of a Shapes layer new corners (``{row: vertices}``).

    napari has no public call to edit one shape, and setting ``data`` rebuilds
    every shape (190 ms per paint stroke with 1,000 boxes here). The moved
    rows are removed and added again at the end instead, with their features,
    colours and widths (17 ms for 1,000 boxes): boxes are found by their
    (slice, label id) key, never by row. The selection stays on the same boxes."""
    rows = sorted(moved)
    kept_features = boxes.features.iloc[rows].copy()
    edge_colors, face_colors = boxes.edge_color[rows], boxes.face_color[rows]
    widths = [boxes.edge_width[r] for r in rows]
    reselect = [r for r in rows if r in boxes.selected_data]
    boxes.remove(rows)  # napari shifts the selection of the other boxes itself
    start = len(boxes.data)
    boxes.add_rectangles(
        [moved[r] for r in rows], edge_width=widths, edge_color=edge_colors, face_color=face_colors
    )
    features = boxes.features.copy()
    for column in kept_features:
        features.loc[features.index[start:], column] = kept_features[column].to_numpy()
    boxes.features = features
    if reselect:
        boxes.selected_data = set(boxes.selected_data) | {start + rows.index(r) for r in reselect}

"""npe2 reader and writers: COCO JSON in and out, measurements CSV out.

Qt-free: these take and return layer data, so napari's File menus use them
and tests call them directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import _layers
from .core.io.coco_json import coco_document, read_coco
from .core.io.files import atomic_write
from .core.io.tables import (
    channel_names_of,
    measurements,
    slice_name,
    write_measurement_rows,
)
from .core.labels.postprocess import boxes_from_labels
from .core.types import InstanceResult


def result_from_layer(data: np.ndarray, meta: dict) -> InstanceResult:
    """An InstanceResult from a Labels layer's data and its features table
    (class and score per label when the layer came from this plugin)."""
    labels = np.asarray(data)
    label_ids = np.unique(labels)
    label_ids = label_ids[label_ids > 0].astype(np.int64)
    features = meta.get("features")
    by_label: dict[int, dict] = {}
    if features is not None and len(features) and "class_name" in features:
        key = "index" if "index" in features else "label"
        for row in features.to_dict("records"):
            by_label[int(row[key])] = row
    names = ["background"]
    for label_id in label_ids:
        name = str(by_label.get(int(label_id), {}).get("class_name", "object"))
        if name not in names:
            names.append(name)
    class_ids = [
        names.index(str(by_label.get(int(i), {}).get("class_name", "object"))) for i in label_ids
    ]
    scores = [float(by_label.get(int(i), {}).get("score", 1.0)) for i in label_ids]
    return InstanceResult(
        labels=labels,
        label_ids=label_ids,
        boxes=boxes_from_labels(labels, label_ids),
        scores=np.asarray(scores, np.float32),
        class_ids=np.asarray(class_ids, np.int64),
        class_names=names,
    )


def _slices(data: np.ndarray):
    """(stack index, 2D slice) pairs of a label image of any dimension; () for 2D."""
    data = np.asarray(data)
    if data.ndim == 2:
        yield (), data
        return
    for index in np.ndindex(*data.shape[:-2]):
        yield index, data[index]


def write_coco(path: str, data, meta: dict) -> list[str]:
    """Save a Labels layer (ids, classes and scores from its features) as COCO JSON."""
    name = meta.get("name", Path(path).stem)
    entries = [(slice_name(name, i), result_from_layer(s, meta)) for i, s in _slices(data)]
    text = json.dumps(coco_document(entries))
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return [path]


def write_measurements(path: str, layer_data: list) -> list[str]:
    """Per-object measurements CSV of the Labels layer (mean intensity from an
    Image layer saved along with it, if any)."""
    labels = [(d, m) for d, m, kind in layer_data if kind == "labels"]
    images = [np.asarray(d) for d, _, kind in layer_data if kind == "image"]
    if len(labels) != 1:
        raise ValueError("select exactly one Labels layer (and optionally its image)")
    data, meta = labels[0]
    result = result_from_layer(data, meta)
    names = {int(i): result.class_names[int(c)] for i, c in zip(result.label_ids, result.class_ids)}
    scores = {int(i): float(s) for i, s in zip(result.label_ids, result.scores)}
    intensity = images[0] if images else None
    image_meta = next((m for _, m, kind in layer_data if kind == "image"), {})
    channel_names = None
    if intensity is not None and intensity.ndim == data.ndim + 1:
        channel_names = channel_names_of(intensity.shape[-1], bool(image_meta.get("rgb")))
    rows = []
    for index, labels2d in _slices(data):
        plane = intensity
        if intensity is not None and index:
            plane = intensity[index]
        if plane is not None and plane.shape[:2] != labels2d.shape:
            plane = None
        for row in measurements(labels2d, plane, names, scores, channel_names):
            rows.append({"slice": ",".join(map(str, index)), **row} if index else row)
    write_measurement_rows(path, rows)
    return [path]


def get_coco_reader(path):
    """npe2 reader hook: a reader for COCO JSON files, None for other JSON."""
    if isinstance(path, list) or not str(path).endswith(".json"):
        return None
    try:
        with open(path) as f:
            head = f.read(4096)
    except OSError:
        return None
    if '"annotations"' not in head and '"images"' not in head:
        return None
    return read_coco_layers


def read_coco_layers(path) -> list[tuple]:
    """Labels and box layers for each image of a COCO file."""
    layers = []
    for image in read_coco(str(path)):
        name = Path(image.file_name).stem or Path(path).stem
        layers.append(_layers.labels_layer(image.result, name, {}))
        layers.append(_layers.boxes_layer(image.result, f"{name} boxes", {}))
    return layers

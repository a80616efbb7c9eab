"""Core results -> napari layer data tuples (no Qt; testable with ViewerModel).

Geometry: result layers copy the source layer's scale, translate, rotate,
shear and affine, so they sit exactly on the image in world coordinates.
"""

from __future__ import annotations

import numpy as np

from .core.io.tables import channel_names_of, object_table
from .core.labels.linking import linked_object_table
from .core.models.architectures import SEMANTIC
from .core.types import InstanceResult, SemanticResult

# Tag stored in layer.metadata so re-runs can find the layers this plugin made.
TAG = "napari_instseg"

CLASS_COLORS = ["#ff8c00", "#00e5ff", "#ff3df5", "#7cff4f", "#ffe14d", "#ff4d4d", "#4d7cff"]


def geometry_from(
    source_layer, stack_offset: tuple[int, ...] = (), channel_axis: int | None = None
) -> dict:
    """Transform kwargs placing a result exactly over ``source_layer``.

    Results have the source's stack and spatial axes. An RGB layer's colour
    axis is not part of its transforms; a ``channel_axis`` of a non-RGB layer
    is, and is dropped (with rotate/shear/affine, which cannot be split per
    axis; they are identity for nearly all microscopy layers). A result of one
    slice keeps its stack axes with length 1: ``stack_offset`` (the slice
    index along the result's leading axes) moves it onto that slice.
    """
    if source_layer is None:
        return {}
    scale = np.asarray(source_layer.scale, float)
    translate = np.asarray(source_layer.translate, float)
    keep_all = channel_axis is None or getattr(source_layer, "rgb", False)
    if not keep_all:
        scale = np.delete(scale, channel_axis)
        translate = np.delete(translate, channel_axis)
    translate = translate.copy()
    for axis, position in enumerate(stack_offset):
        translate[axis] += position * scale[axis]
    geometry = {"scale": tuple(scale), "translate": tuple(translate)}
    if keep_all:
        geometry.update(
            rotate=source_layer.rotate, shear=source_layer.shear, affine=source_layer.affine
        )
    return geometry


def features_table(
    result: InstanceResult, intensity: np.ndarray | None = None, scale=None, channel_names=None
) -> dict:
    """Per-instance columns (from ``io.tables.object_table``, with the mean,
    median and sum intensity per channel of ``intensity``); ``index`` maps
    label ids to rows in napari. A linked stack has one row per 3D object or
    track, with its slice range, volume (also in ``scale``'s units) and centroid."""
    if "link" in result.metadata:
        objects = linked_object_table(result, scale, intensity)
        columns = [c for c in objects if c != "label_id"]
    else:
        objects = object_table(result, intensity, channel_names)
        columns = ["class_name", "score", "area", "mean_intensity"]
        columns += [c for c in objects if "_intensity" in c and c not in columns]
    table = {"index": objects["label_id"], "label": objects["label_id"]}
    for column in columns:
        if column in objects:
            table[column] = objects[column]
    return table


def labels_layer(
    result: InstanceResult, name: str, geometry: dict, intensity=None, model="", channel_names=None
):
    features = features_table(result, intensity, geometry.get("scale"), channel_names)
    return (
        result.labels,
        {
            "name": name,
            "features": features,
            "metadata": {TAG: {"kind": "instances", "model": model, "sizing": result.metadata}},
            **geometry,
        },
        "labels",
    )


def boxes_layer(result: InstanceResult, name: str, geometry: dict, model="", show_text=False):
    """Rectangles around each instance, (row, col) corners with max exclusive,
    the slice coordinate prepended for stacks."""
    n = len(result)
    boxes = result.boxes.astype(float)
    rectangles = np.zeros((n, 4, 2), float)
    y0, x0, y1, x1 = boxes.T if n else (np.zeros(0),) * 4
    rectangles[:, :, 0] = np.stack([y0, y0, y1, y1], 1) - 0.5 if n else 0
    rectangles[:, :, 1] = np.stack([x0, x1, x1, x0], 1) - 0.5 if n else 0
    stack_shape = result.labels.shape[:-2]
    if stack_shape:
        positions = np.array(np.unravel_index(result.stack_index, stack_shape)).T
        positions = np.repeat(positions[:, None, :], 4, axis=1).astype(float)
        rectangles = np.concatenate([positions, rectangles], axis=2)
    class_names = result.instance_class_names
    palette = {c: CLASS_COLORS[i % len(CLASS_COLORS)] for i, c in enumerate(result.class_names[1:])}
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "edge_width": 1.5,
        "face_color": "transparent",
        "edge_color": [palette.get(c, CLASS_COLORS[0]) for c in class_names] or "orange",
        "features": {
            "label_id": result.label_ids.astype(np.int64),
            "class_name": np.array(class_names, dtype=object),
            "score": result.scores.astype(float),
        },
        "metadata": {TAG: {"kind": "boxes", "model": model}},
        "ndim": len(stack_shape) + 2,
        **geometry,
    }
    if show_text:
        kwargs["text"] = {"string": "{class_name} {score:.2f}", "size": 8, "color": "white"}
    return (list(rectangles), kwargs, "shapes")


def classes_layer(result: SemanticResult, name: str, geometry: dict, model=""):
    features = {
        "index": np.arange(len(result.class_names)),
        "class_name": np.array(result.class_names, dtype=object),
    }
    return (
        result.classes,
        {
            "name": name,
            "features": features,
            "metadata": {TAG: {"kind": "classes", "model": model}},
            **geometry,
        },
        "labels",
    )


def result_layers(task: str, source, result, offset, channel_axis, names: dict) -> list:
    """The layer data tuples of one run: for U-Nets the class map, then the
    instances and their boxes, placed on ``source`` (an image layer)."""
    model = names["model"]
    geometry = geometry_from(source, stack_offset=offset, channel_axis=channel_axis)
    data = source.data if not source.multiscale else source.data[0]
    intensity, channel_names = None, None
    if not offset and data.size <= 64e6:
        intensity = np.asarray(data)
        if channel_axis is not None and not source.rgb:  # channels last, as RGB's are
            intensity = np.moveaxis(intensity, channel_axis, -1)
        if channel_axis is not None or source.rgb:
            channel_names = channel_names_of(intensity.shape[-1], source.rgb)
    instances = result.instances if task == SEMANTIC else result
    tuples = [
        labels_layer(instances, names["instances"], geometry, intensity, model, channel_names),
        boxes_layer(instances, names["boxes"], geometry, model, names["show_text"]),
    ]
    if task == SEMANTIC:
        tuples.insert(0, classes_layer(result, names["classes"], geometry, model))
    if instances.tracks is not None and len(instances.tracks):
        tuples.append(tracks_layer(instances, names["instances"], geometry, model))
    return tuples


def tracks_layer(result: InstanceResult, instances_name: str, geometry: dict, model=""):
    """napari Tracks of a time-linked result: one track per id, through the
    objects' centroids."""
    name = instances_name.replace(" instances ", " tracks ", 1)
    if name == instances_name:
        name = f"{instances_name} tracks"
    kwargs = {
        "name": name,
        "tail_length": 10,
        "metadata": {TAG: {"kind": "tracks", "model": model}},
        **{k: v for k, v in geometry.items() if k in ("scale", "translate")},
    }
    return (result.tracks, kwargs, "tracks")


def instances_and_boxes(layers: list):
    """The instances (Labels) and boxes (Shapes) layers among one run's layers."""
    kinds = [layer.metadata.get(TAG, {}).get("kind") for layer in layers]
    return layers[kinds.index("instances")], layers[kinds.index("boxes")]


def describe_count(labels_layer) -> str:
    """ "N objects", or "N 3D objects" / "N tracks" for a linked result."""
    count = len(labels_layer.features)
    along = labels_layer.metadata.get(TAG, {}).get("sizing", {}).get("link", {}).get("along")
    noun = {"z": "3D objects", "t": "tracks"}.get(along, "objects")
    return f"{count} {noun}"

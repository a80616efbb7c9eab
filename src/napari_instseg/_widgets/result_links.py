"""Which result layers are linked (``linked_layers``), and linking a run's
layers to the model and image that made them."""

from __future__ import annotations

import numpy as np

from ._common import stack_axes
from .linked_layers import LinkedResultLayers

# the link of each linked Labels layer (by id), for the curation tools and re-runs
_LINKS: dict[int, LinkedResultLayers] = {}


def layer_identity(layer) -> int:
    """The same number for a layer however it is reached: napari hands plugin
    widgets a proxy of the viewer, whose layers are new proxy objects each time."""
    return id(getattr(layer, "__wrapped__", layer))


def link_of(labels) -> LinkedResultLayers | None:
    """The active link of a Labels layer, if it has one."""
    link = any_link_of(labels)
    return link if link is not None and link.linked else None


def any_link_of(labels) -> LinkedResultLayers | None:
    """The link of a Labels layer, active or unlinked by the user."""
    link = _LINKS.get(layer_identity(labels))
    same = link is not None and layer_identity(link.labels) == layer_identity(labels)
    return link if same else None


def unlink_layer(layer) -> None:
    """Stop the link that ``layer`` (labels or boxes) belongs to, before a
    re-run writes into it."""
    for link in list(_LINKS.values()):
        if layer_identity(layer) in (layer_identity(link.labels), layer_identity(link.boxes)):
            link.unlink()


def link_result(viewer, labels, boxes, source, channel_axis, offset, options, message):
    """Link a run's result layers (replacing an earlier link of them): drawn
    boxes are segmented by the run's model with its options on ``source``."""
    old = link_of(labels)
    if old is not None:
        old.unlink()
    data = source.data if not source.multiscale else source.data[0]
    axes = stack_axes(data.ndim, channel_axis)
    plane_channel_axis = None
    if channel_axis is not None:
        plane_channel_axis = channel_axis - sum(a < channel_axis for a in axes)
    box_options = {k: options[k] for k in ("device", "mask_threshold") if k in options}

    def image_plane(plane):
        index = [slice(None)] * data.ndim
        for axis, at, shift in zip(axes, plane, offset or (0,) * len(plane)):
            index[axis] = at + shift
        return np.asarray(data[tuple(index)])

    def segment(plane, box):
        from ..core.engine.prompts import segment_in_boxes

        image = image_plane(plane)
        return segment_in_boxes(
            image, options["model"], [box], channel_axis=plane_channel_axis, **box_options
        )[0]

    def intensity():
        return None if offset or data.size > 64e6 or plane_channel_axis is not None else data

    link = LinkedResultLayers(labels, boxes, segment, intensity, message)
    _LINKS[layer_identity(labels)] = link

    def on_removed(event):
        ours = (layer_identity(labels), layer_identity(boxes))
        if layer_identity(event.value) in ours and link.linked:
            link.unlink()
            _LINKS.pop(layer_identity(labels), None)

    viewer.layers.events.removed.connect(on_removed)
    return link

"""Linking 2D instances through a stack: one id per 3D object (``"z"``) or
per track (``"t"``), as a step after slice-by-slice segmentation.

Adjacent slices are matched one to one by optimal assignment
(``scipy.optimize.linear_sum_assignment``), run separately on each connected
group of candidate pairs so that thousands of objects per slice stay cheap.

- ``"z"``: a pair is a candidate when its IoU reaches ``threshold``; the
  cost is ``1 - IoU``.
- ``"t"``: a pair is a candidate when its IoU reaches ``threshold`` or its
  centroids lie within ``max_distance`` (default: half the earlier object's
  equivalent diameter, at least 2 px); the cost is ``1 - IoU + distance /
  max_distance``. Divisions are not linked.

In both, an object missed in up to ``max_gap`` slices (default 1) keeps its
id: its last footprint stays a candidate at a cost penalty, so an object seen
in the slice before wins.

Linking streams: it holds only the previous slice's objects (and the last
footprints of recently lost tracks), and relabels the stack in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..types import InputError, InstanceResult

LINK_AXES = ("z", "t")
# Adjacent slices of one nucleus overlap by IoU (r-1)^2/r^2 where its radius
# shrinks by a pixel, and less where a slice's mask is cut or merged. On
# benchmarks/linking.py's z-stacks (4 val screens), 0.25 kept 0.83 (U-Net)
# and 0.95 (Mask R-CNN) of the nuclei under one id, 0.15 kept 0.91 and 0.98;
# no predicted id crossed two nuclei at either (the one-to-one assignment
# keeps neighbours apart).
IOU_THRESHOLD = 0.15
# slices an object may be missed in and keep its id: a dim slice in z, a
# missed detection in time (z: 0.81 -> 0.83 kept for the U-Net)
MAX_GAP = 1
_GAP_PENALTY = 1.0  # added to a lost track's cost: the frame before wins ties
_NO_MATCH = 1e9


@dataclass
class _Footprint:
    """An object as the next slice sees it: its pixels, size and centre."""

    pixels: np.ndarray  # flat indices into the slice
    centroid: np.ndarray  # (y, x)
    gate: float  # centroid distance accepted ("t")
    age: int = 0  # slices since it was last seen


def check_link(link: str | None, stack_shape: tuple[int, ...]) -> str | None:
    """``link`` checked against the image's stack axes (None: no linking)."""
    if link in (None, "", "none"):
        return None
    if link not in LINK_AXES:
        raise InputError(f"link must be 'z', 't' or None, not {link!r}")
    if len(stack_shape) != 1:
        got = "a 2D image" if not stack_shape else f"stack axes {stack_shape}"
        raise InputError(f"linking along {link} needs a stack with one stack axis, not {got}")
    return link


class SliceLinker:
    """Gives the objects of each next slice their linked ids."""

    def __init__(
        self,
        along: str,
        threshold: float | None = None,
        max_distance: float | None = None,
        max_gap: int | None = None,
    ):
        if along not in LINK_AXES:
            raise InputError(f"link must be 'z' or 't', not {along!r}")
        self.along = along
        self.threshold = IOU_THRESHOLD if threshold is None else float(threshold)
        if not 0 < self.threshold <= 1:
            raise InputError(f"link threshold {self.threshold} must be above 0 and at most 1")
        self.max_distance = None if max_distance is None else float(max_distance)
        self.max_gap = MAX_GAP if max_gap is None else int(max_gap)
        self.next_id = 1
        self._active: dict[int, _Footprint] = {}  # linked id -> footprint

    def link(self, labels: np.ndarray) -> dict[int, int]:
        """Linked id of each object id in ``labels`` (one 2D slice)."""
        current = _footprints(labels, self.max_distance)
        ids = list(current)
        candidates = list(self._active.items())
        matches = self._assign(candidates, ids, current, labels)
        mapping: dict[int, int] = {}
        for local in ids:
            if local in matches:
                mapping[local] = matches[local]
            else:
                mapping[local] = self.next_id
                self.next_id += 1
        seen = {mapping[local]: current[local] for local in ids}
        for linked, footprint in self._active.items():
            if linked not in seen and footprint.age < self.max_gap:
                footprint.age += 1
                seen[linked] = footprint
        self._active = seen
        return mapping

    def _assign(self, candidates, ids, current, labels) -> dict[int, int]:
        if not candidates or not ids:
            return {}
        flat = labels.ravel()
        rows, cols, costs = [], [], []
        column = {local: j for j, local in enumerate(ids)}
        centroids = np.array([current[i].centroid for i in ids])
        areas = np.array([len(current[i].pixels) for i in ids], float)
        for r, (_, old) in enumerate(candidates):
            under = flat[old.pixels]
            under = under[under > 0]
            overlap = dict(zip(*np.unique(under, return_counts=True))) if under.size else {}
            near: set[int] = set(overlap)
            distances = None
            if self.along == "t":
                distances = np.hypot(*(centroids - old.centroid).T)
                near.update(ids[j] for j in np.flatnonzero(distances <= old.gate))
            for local in near:
                j = column[int(local)]
                inter = overlap.get(local, 0)
                iou = inter / (len(old.pixels) + areas[j] - inter)
                if self.along == "z":
                    if iou < self.threshold:
                        continue
                    cost = 1.0 - iou
                else:
                    if iou < self.threshold and distances[j] > old.gate:
                        continue
                    cost = 1.0 - iou + distances[j] / old.gate + _GAP_PENALTY * old.age
                rows.append(r)
                cols.append(j)
                costs.append(cost)
        if not rows:
            return {}
        return {
            ids[j]: candidates[r][0]
            for r, j in _optimal_pairs(np.array(rows), np.array(cols), np.array(costs), len(ids))
        }


def _optimal_pairs(rows, cols, costs, n_cols):
    """One-to-one pairs of least total cost, solved per connected group."""
    n_rows = int(rows.max()) + 1
    graph = coo_matrix((np.ones(len(rows)), (rows, n_rows + cols)), shape=(n_rows + n_cols,) * 2)
    _, group = connected_components(graph, directed=False)
    by_group: dict[int, list[int]] = {}
    for k, r in enumerate(rows):
        by_group.setdefault(int(group[r]), []).append(k)
    for members in by_group.values():
        r_ids, r_index = np.unique(rows[members], return_inverse=True)
        c_ids, c_index = np.unique(cols[members], return_inverse=True)
        matrix = np.full((len(r_ids), len(c_ids)), _NO_MATCH)
        matrix[r_index, c_index] = costs[members]
        for a, b in zip(*linear_sum_assignment(matrix)):
            if matrix[a, b] < _NO_MATCH:
                yield int(r_ids[a]), int(c_ids[b])


def _footprints(labels: np.ndarray, max_distance: float | None) -> dict[int, _Footprint]:
    """Each object's pixels (flat indices), centroid and distance gate."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    order = order[np.searchsorted(flat[order], 1) :]  # drop the background
    ids, first, counts = np.unique(flat[order], return_index=True, return_counts=True)
    width = labels.shape[1]
    found = {}
    for local, start, count in zip(ids, first, counts):
        pixels = order[start : start + count]
        centroid = np.array([(pixels // width).mean(), (pixels % width).mean()])
        gate = max(2.0, np.sqrt(count / np.pi)) if max_distance is None else max_distance
        found[int(local)] = _Footprint(pixels, centroid, float(gate))
    return found


def link_stack(
    result: InstanceResult,
    along: str,
    *,
    threshold: float | None = None,
    max_distance: float | None = None,
    max_gap: int | None = None,
    copy: bool = True,
) -> InstanceResult:
    """``result`` (a stack with one stack axis) with its slices' instances
    linked along ``"z"`` or ``"t"``: one id per 3D object or track, kept by
    the labels, ``label_ids`` (one row per object per slice) and, for ``"t"``,
    ``result.tracks`` (napari's ``track_id, t, y, x``)."""
    check_link(along, result.labels.shape[:-2])
    linker = SliceLinker(along, threshold, max_distance, max_gap)
    labels = result.labels.copy() if copy else result.labels
    label_ids = result.label_ids.copy()
    for index in range(labels.shape[0]):
        mapping = linker.link(labels[index])
        if not mapping:
            continue
        lut = np.zeros(max(mapping) + 1, labels.dtype)
        for local, linked in mapping.items():
            lut[local] = linked
        labels[index] = lut[labels[index]]
        rows = np.flatnonzero(result.stack_index == index)
        # a row whose object was painted over entirely has no pixels: id 0
        known = label_ids[rows] < len(lut)
        label_ids[rows] = np.where(known, lut[np.minimum(label_ids[rows], len(lut) - 1)], 0)
    keep = label_ids > 0
    linked = InstanceResult(
        labels=labels,
        label_ids=label_ids[keep],
        boxes=result.boxes[keep],
        scores=result.scores[keep],
        class_ids=result.class_ids[keep],
        class_names=result.class_names,
        stack_index=result.stack_index[keep],
        metadata={
            **result.metadata,
            "link": {"along": along, "threshold": linker.threshold, "objects": linker.next_id - 1},
        },
    )
    if along == "t":
        linked.tracks = tracks_table(linked)
    return linked


def row_measurements(result: InstanceResult) -> tuple[np.ndarray, np.ndarray]:
    """Area and (y, x) centroid of each row's object in its own slice."""
    areas = np.zeros(len(result), np.int64)
    centroids = np.zeros((len(result), 2))
    height, width = result.labels.shape[-2:]
    planes = result.labels.reshape(-1, height, width)
    flat_index = np.arange(height * width)
    rows_y, rows_x = flat_index // width, flat_index % width
    for index, plane in enumerate(planes):
        rows = (
            np.arange(len(result))
            if result.stack_index is None
            else np.flatnonzero(result.stack_index == index)
        )
        if not len(rows):
            continue
        flat = plane.ravel()
        ids = result.label_ids[rows]
        length = max(int(ids.max()), int(flat.max())) + 1
        counts = np.bincount(flat, minlength=length)
        areas[rows] = counts[ids]
        weight = np.maximum(counts[ids], 1)
        centroids[rows, 0] = np.bincount(flat, rows_y, length)[ids] / weight
        centroids[rows, 1] = np.bincount(flat, rows_x, length)[ids] / weight
    return areas, centroids


def tracks_table(result: InstanceResult) -> np.ndarray:
    """(N, 4) ``track_id, t, y, x`` rows sorted by track and frame (napari's
    Tracks layer format), one per object per frame, at the object's centroid."""
    _, centroids = row_measurements(result)
    table = np.column_stack(
        [result.label_ids.astype(float), result.stack_index.astype(float), centroids]
    )
    return table[np.lexsort((table[:, 1], table[:, 0]))]


def linked_object_table(result: InstanceResult, scale=None, intensity=None) -> dict:
    """One row per linked object: its slice range, size over the stack
    (``volume`` in voxels; ``volume_scaled`` in the units of ``scale``, the
    (stack, y, x) pixel size, when given), centroid, class, mean score and,
    when ``intensity`` (an image of the labels' shape, channels last allowed)
    is given, its mean intensity."""
    areas, centroids = row_measurements(result)
    ids, row_object = np.unique(result.label_ids, return_inverse=True)
    n = len(ids)
    size = np.bincount(row_object, areas, n)
    weight = np.maximum(size, 1)
    stack = result.stack_index.astype(float)
    rows_per_object = np.bincount(row_object, None, n)
    best_row = np.zeros(n, np.int64)
    order = np.argsort(result.scores, kind="stable")
    best_row[row_object[order]] = order  # the highest score is written last
    table = {
        "label_id": ids.astype(np.int64),
        "class_name": np.array(result.instance_class_names, dtype=object)[best_row]
        if n
        else np.zeros(0, object),
        "score": np.bincount(row_object, result.scores, n) / np.maximum(rows_per_object, 1),
        "first": np.full(n, np.iinfo(np.int64).max) if n else np.zeros(0, np.int64),
        "last": np.zeros(n, np.int64),
        "slices": rows_per_object.astype(np.int64),
        "volume": size.astype(np.int64),
        "centroid_stack": np.bincount(row_object, stack * areas, n) / weight,
        "centroid_y": np.bincount(row_object, centroids[:, 0] * areas, n) / weight,
        "centroid_x": np.bincount(row_object, centroids[:, 1] * areas, n) / weight,
    }
    np.minimum.at(table["first"], row_object, result.stack_index)
    np.maximum.at(table["last"], row_object, result.stack_index)
    if intensity is not None and intensity.shape[: result.labels.ndim] == result.labels.shape:
        gray = intensity if intensity.ndim == result.labels.ndim else intensity.mean(-1)
        table["mean_intensity"] = (
            np.asarray(ndimage.mean(gray, result.labels, ids)) if n else np.zeros(0)
        )
    if scale is not None:
        table["volume_scaled"] = size * float(np.prod(np.asarray(scale, float)[-3:]))
    return table

"""Per-object tables: the rows the CLI's ``_boxes.csv``, the napari
features and the measurements CSV are cut from, and slice names of stacks."""

from __future__ import annotations

import numpy as np

from ..labels.linking import row_measurements
from ..types import InstanceResult


def object_table(result: InstanceResult, intensity: np.ndarray | None = None) -> dict:
    """One row per object, in columns: the table the CLI's ``_boxes.csv`` and
    the napari features are cut from. ``stack_index`` leads for stacks;
    ``mean_intensity`` (of the gray or channel-averaged image) when
    ``intensity`` has the labels' shape."""
    from scipy import ndimage

    ids = result.label_ids.astype(np.int64)
    if result.areas is not None:
        areas = np.asarray(result.areas, np.int64)
    elif len(np.unique(ids)) == len(ids):  # one row per id: count each id once
        areas = np.bincount(result.labels.ravel(), minlength=int(ids.max()) + 1 if len(ids) else 1)
        areas = areas[ids] if len(ids) else np.zeros(0, np.int64)
    else:  # a linked object has one row per slice under one id: count per slice
        areas = row_measurements(result)[0]
    boxes = np.asarray(result.boxes).reshape(-1, 4).astype(np.int64)
    table = {} if result.stack_index is None else {"stack_index": result.stack_index}
    table.update(
        label_id=ids,
        class_id=result.class_ids.astype(np.int64),
        class_name=np.array(result.instance_class_names, dtype=object),
        score=result.scores.astype(float),
        area=areas,
        y_min=boxes[:, 0],
        x_min=boxes[:, 1],
        y_max=boxes[:, 2],
        x_max=boxes[:, 3],
    )
    if intensity is not None and intensity.shape[: result.labels.ndim] == result.labels.shape:
        gray = intensity if intensity.ndim == result.labels.ndim else intensity.mean(-1)
        table["mean_intensity"] = (
            np.asarray(ndimage.mean(gray, result.labels, ids)) if len(ids) else np.zeros(0)
        )
    return table


def slice_name(name: str, index: tuple[int, ...]) -> str:
    """The name of one 2D slice of a stack in COCO files: ``name[z]``, ``name[t,z]``."""
    return f"{name}[{','.join(map(str, index))}]" if index else name


# the per-object columns of object_table (and of the CLI's _boxes.csv), with
# shape measurements after them: one name for one thing in every table
MEASUREMENT_COLUMNS = [
    "label_id",
    "class_name",
    "score",
    "area",
    "y_min",
    "x_min",
    "y_max",
    "x_max",
    "centroid_y",
    "centroid_x",
    "eccentricity",
    "mean_intensity",
]


def measurements(
    labels: np.ndarray,
    intensity: np.ndarray | None = None,
    class_names: dict[int, str] | None = None,
    scores: dict[int, float] | None = None,
) -> list[dict]:
    """One row per object of a 2D label image (columns: ``MEASUREMENT_COLUMNS``)."""
    from skimage.measure import regionprops

    if intensity is not None and intensity.ndim == 3:
        intensity = intensity.mean(-1)
    rows = []
    for region in regionprops(np.asarray(labels), intensity_image=intensity):
        y0, x0, y1, x1 = region.bbox
        rows.append(
            {
                "label_id": region.label,
                "class_name": (class_names or {}).get(region.label, ""),
                "score": (scores or {}).get(region.label, ""),
                "area": int(region.area),
                "y_min": y0,
                "x_min": x0,
                "y_max": y1,
                "x_max": x1,
                "centroid_y": round(float(region.centroid[0]), 3),
                "centroid_x": round(float(region.centroid[1]), 3),
                "eccentricity": round(float(region.eccentricity), 5),
                "mean_intensity": round(float(region.intensity_mean), 5)
                if intensity is not None
                else "",
            }
        )
    return rows

"""Per-object tables: the rows the CLI's ``_boxes.csv``, the napari
features and the measurements CSV are cut from, and slice names of stacks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..labels.linking import row_measurements
from ..types import InstanceResult
from .files import atomic_write


def channel_names_of(channels: int, rgb: bool = False) -> list[str]:
    """Default names of an image's channels: red, green, blue (alpha) for
    RGB(A), else ch0, ch1, ..."""
    if rgb and channels in (3, 4):
        return ["red", "green", "blue", "alpha"][:channels]
    return [f"ch{k}" for k in range(channels)]


def intensity_columns(
    labels: np.ndarray,
    label_ids: np.ndarray,
    intensity: np.ndarray,
    channel_names: list[str] | None = None,
) -> dict:
    """Mean, median and sum intensity of each object in each channel.

    ``intensity`` has the labels' shape (one channel: columns
    ``mean_intensity``, ``median_intensity``, ``sum_intensity``) or one more
    trailing axis of channels (``mean_intensity_NAME`` ... per channel, NAME
    from ``channel_names``, by default ``channel_names_of``)."""
    from scipy import ndimage

    intensity = np.asarray(intensity)
    single = intensity.ndim == labels.ndim
    planes = intensity[..., None] if single else intensity
    count = planes.shape[-1]
    names = list(channel_names or channel_names_of(count))
    if len(names) != count:
        raise ValueError(f"{count} channels but {len(names)} channel names")
    ids = np.asarray(label_ids, np.int64)
    # the objects' pixels only: the median sorts every pixel it is given, and
    # the background was most of them (17 of 22 ms per 520x696 image shown)
    labels = np.asarray(labels)  # a zarr or dask array, in block-wise runs
    inside = labels > 0
    object_labels = labels[inside]
    columns = {}
    for k in range(count):
        plane = planes[..., k][inside].astype(np.float64, copy=False)
        suffix = "" if single else f"_{names[k]}"
        for statistic, measure in (
            ("mean", ndimage.mean),
            ("median", ndimage.median),
            ("sum", ndimage.sum),
        ):
            values = measure(plane, object_labels, ids) if len(ids) else []
            columns[f"{statistic}_intensity{suffix}"] = np.asarray(values, np.float64)
    return columns


def object_table(
    result: InstanceResult,
    intensity: np.ndarray | None = None,
    channel_names: list[str] | None = None,
) -> dict:
    """One row per object, in columns: the table the CLI's ``_boxes.csv`` and
    the napari features are cut from. ``stack_index`` leads for stacks. When
    ``intensity`` has the labels' shape (with or without a trailing channel
    axis): ``mean_intensity`` of the gray or channel-averaged image, and the
    mean, median and sum in each channel (``intensity_columns``)."""
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
        if intensity.ndim == result.labels.ndim:  # one channel: its mean is mean_intensity
            table.update(intensity_columns(result.labels, ids, intensity))
        else:
            gray = intensity.mean(-1)
            table["mean_intensity"] = (
                np.asarray(ndimage.mean(gray, result.labels, ids)) if len(ids) else np.zeros(0)
            )
            if intensity.ndim == result.labels.ndim + 1:
                table.update(intensity_columns(result.labels, ids, intensity, channel_names))
    return table


# the columns of the CLI's OUTDIR/STEM_boxes.csv (and of an image series'
# labels/STEM_boxes.csv), cut from object_table
BOXES_COLUMNS = [
    "stack_index",
    "label_id",
    "class_id",
    "class_name",
    "score",
    "y_min",
    "x_min",
    "y_max",
    "x_max",
]


def write_table(path: Path, table: dict, digits: int = 3) -> None:
    """A CSV of equal-length columns, floats with ``digits`` decimals, written atomically."""
    columns = list(table)

    def cell(value):
        return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else value

    def write(target: Path) -> None:
        with target.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in range(len(table[columns[0]]) if columns else 0):
                writer.writerow(cell(table[c][row]) for c in columns)

    atomic_write(path, write)


def write_boxes_table(path: Path, table: dict) -> None:
    """The ``BOXES_COLUMNS`` of an ``object_table`` as a CSV (``STEM_boxes.csv``)."""
    write_table(path, {c: table[c] for c in BOXES_COLUMNS if c in table}, digits=4)


def write_measurement_rows(path: Path, rows: list[dict], leading=("slice",)) -> None:
    """Rows of ``measurements`` as a CSV: the ``leading`` columns the rows
    have (e.g. image, slice), ``MEASUREMENT_COLUMNS``, then the per-channel ones."""
    columns = [c for c in leading if any(c in row for row in rows)] + MEASUREMENT_COLUMNS
    for row in rows:
        columns += [c for c in row if c not in columns]

    def write(target: Path) -> None:
        with target.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_table(path: Path) -> list[dict]:
    """The rows of a CSV written by ``write_table``, as dicts of strings."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


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
    channel_names: list[str] | None = None,
) -> list[dict]:
    """One row per object of a 2D label image: ``MEASUREMENT_COLUMNS`` (with
    ``mean_intensity`` of the gray or channel-averaged image), then the mean,
    median and sum intensity in each channel (``intensity_columns``)."""
    from skimage.measure import regionprops

    labels = np.asarray(labels)
    per_channel = {}
    if intensity is not None:
        intensity = np.asarray(intensity)
        present = np.unique(labels)
        present = present[present > 0]
        per_channel = intensity_columns(labels, present, intensity, channel_names)
        per_channel.pop("mean_intensity", None)
        per_channel = {
            column: dict(zip(present.tolist(), values)) for column, values in per_channel.items()
        }
        if intensity.ndim == 3:
            intensity = intensity.mean(-1)
    rows = []
    for region in regionprops(labels, intensity_image=intensity):
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
                **{
                    column: round(float(values[region.label]), 5)
                    for column, values in per_channel.items()
                },
            }
        )
    return rows

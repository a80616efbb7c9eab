"""A folder of images under review: which images it holds, each one's label
image beside the folder, and the state of each (not segmented, segmented,
reviewed) in a small JSON file, so that closing napari and opening the folder
again restores the work.

Layout (the same as ``napari-instseg predict DIR -o DIR/labels`` writes)::

    DIR/img_07.tif
    DIR/labels/img_07_labels.tif      label image (instance ids)
    DIR/labels/img_07_boxes.csv       its objects: class and score per label id
    DIR/labels/instseg-series.json    state, model and object count per image

Every file is written atomically (a temporary file renamed over the old one),
so a crash or a full disk never leaves half a label image. A reviewed image's
labels are the user's: nothing in this module overwrites them except the
user's own save.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..io.files import IMAGE_SUFFIXES, atomic_write
from ..io.images import read_image
from ..io.inputs import read_input
from ..io.tables import read_table, write_boxes_table
from ..io.zarr_io import is_zarr
from ..labels.postprocess import boxes_from_labels
from ..types import InputError, InstanceResult

STATE_FILE = "instseg-series.json"
LABELS_FOLDER = "labels"
NOT_SEGMENTED, SEGMENTED, REVIEWED = "not segmented", "segmented", "reviewed"
LABEL_SUFFIX = "_labels"


@dataclass
class ImageRecord:
    """What the series knows of one image."""

    state: str = NOT_SEGMENTED
    model: str = ""  # the model that segmented it (a reviewed image keeps it)
    objects: int = 0
    updated: str = ""  # local time of the last save


@dataclass(frozen=True)
class SeriesImage:
    """One image of the series: ``key`` is its path relative to the folder."""

    key: str
    path: Path

    @property
    def stem(self) -> str:
        """The name its label files start with (sub-folders joined by ``__``)."""
        return Path(self.key).with_suffix("").as_posix().replace("/", "__")


def list_images(folder: Path, recursive: bool = False, skip: Path | None = None) -> list[Path]:
    """TIFF, PNG, JPEG files and zarr stores of ``folder`` in name order
    (with ``recursive``, of its sub-folders too, but not of ``skip``); label
    images (``*_labels.*``, ``*_masks.*``) are not images to segment."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if is_zarr(path) or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
            if not path.stem.endswith((LABEL_SUFFIX, "_masks")):
                found.append(path)
        elif recursive and path.is_dir() and (skip is None or path.resolve() != skip.resolve()):
            found.extend(list_images(path, True, skip))
    return found


class ImageSeries:
    """The images of a folder, their labels and their review state.

    ``labels_folder`` defaults to ``folder/labels``. Opening reads the state
    file if there is one; a label file found without a record (e.g. written
    by ``predict``) counts as segmented, a record whose file is gone as not
    segmented.
    """

    def __init__(self, folder, labels_folder=None, recursive: bool = False):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: no such folder")
        self.labels_folder = Path(labels_folder or self.folder / LABELS_FOLDER).expanduser()
        self.recursive = recursive
        paths = list_images(self.folder, recursive, skip=self.labels_folder)
        if not paths:
            raise InputError(f"{self.folder}: no images (TIFF, PNG, JPEG or OME-Zarr) in it")
        self.images = [
            SeriesImage(path.relative_to(self.folder).as_posix(), path) for path in paths
        ]
        self._check_writable()
        # a worker saves segmentations while the user reviews in the main thread
        self._lock = threading.RLock()
        self.records = {image.key: ImageRecord() for image in self.images}
        self.unreadable: dict[str, str] = {}  # key -> why (found by a segmentation run)
        self._load_state()

    def __len__(self) -> int:
        return len(self.images)

    # --- state -------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.labels_folder / STATE_FILE

    def record(self, index: int) -> ImageRecord:
        return self.records[self.images[index].key]

    def indices(self, *states: str) -> list[int]:
        """The images in any of ``states``, in order."""
        return [k for k, image in enumerate(self.images) if self.records[image.key].state in states]

    def summary(self) -> str:
        """``12 images: 3 reviewed, 7 segmented, 2 not segmented``."""
        counts = {s: len(self.indices(s)) for s in (REVIEWED, SEGMENTED, NOT_SEGMENTED)}
        parts = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        return f"{len(self)} images: {parts}"

    def _check_writable(self) -> None:
        """A one-line error now rather than a lost correction later."""
        folder = self.labels_folder
        existing = folder if folder.exists() else folder.parent
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: not a folder, cannot hold the label images")
        if not os.access(existing, os.W_OK):
            raise InputError(
                f"{existing}: read-only, cannot save labels there (choose another labels folder)"
            )

    def _load_state(self) -> None:
        stored = {}
        if self.state_path.exists():
            try:
                stored = json.loads(self.state_path.read_text()).get("images", {})
            except (OSError, ValueError, AttributeError):
                # kept for the user to look at; the labels themselves are intact
                self.state_path.replace(self.state_path.with_suffix(".json.unreadable"))
        for image in self.images:
            record = ImageRecord(**stored[image.key]) if image.key in stored else ImageRecord()
            on_disk = self.labels_path(image).exists()
            if on_disk and record.state == NOT_SEGMENTED:
                record.state = SEGMENTED
            if not on_disk:
                record = ImageRecord()
            self.records[image.key] = record

    def _save_state(self) -> None:
        document = {
            "format": "napari-instseg image series",
            "version": 1,
            "folder": str(self.folder),
            "images": {key: asdict(record) for key, record in self.records.items()},
        }
        atomic_write(self.state_path, lambda p: p.write_text(json.dumps(document, indent=1)))

    # --- files -------------------------------------------------------------------------
    def labels_path(self, image: SeriesImage | int) -> Path:
        image = self.images[image] if isinstance(image, int) else image
        return self.labels_folder / f"{image.stem}{LABEL_SUFFIX}.tif"

    def boxes_path(self, image: SeriesImage | int) -> Path:
        image = self.images[image] if isinstance(image, int) else image
        return self.labels_folder / f"{image.stem}_boxes.csv"

    def read_image(self, index: int, channel_axis: int | None = None):
        """(pixels, channel axis) of an image; zarr stays on disk."""
        image, channel_axis, _ = read_input(self.images[index].path, channel_axis)
        return image, channel_axis

    def read_channels_last(self, index: int) -> tuple[np.ndarray, bool]:
        """(pixels in memory with any channel axis last, whether it came from a
        given or stored channel axis rather than an RGB file's own last axis)."""
        image, channel_axis = self.read_image(index)
        image = np.asarray(image)
        if channel_axis is not None:
            image = np.moveaxis(image, channel_axis, -1)
        return image, channel_axis is not None

    def read_labels(self, index: int) -> np.ndarray | None:
        """The saved label image, or None when the image has none."""
        path = self.labels_path(index)
        return read_image(path) if path.exists() else None

    def read_objects(self, index: int) -> dict[int, tuple[str, float]]:
        """{label id: (class name, score)} saved with the labels (may be empty)."""
        path = self.boxes_path(index)
        if not path.exists():
            return {}
        table = read_table(path)
        return {
            int(row["label_id"]): (row.get("class_name", ""), float(row.get("score") or 1.0))
            for row in table
        }

    def save(self, index: int, labels: np.ndarray, *, reviewed: bool, model: str = "",
             table: dict | None = None) -> None:  # fmt: skip
        """Write an image's labels (and its objects' ``table``, columns of
        ``io.tables.object_table``) and record its state. A save that is not
        a review never replaces labels the user reviewed."""
        image = self.images[index]
        labels = np.asarray(labels)
        with self._lock:
            record = self.records[image.key]
            if record.state == REVIEWED and not reviewed:
                raise InputError(f"{image.key}: reviewed; its labels are not overwritten")
            self._write(image, labels, table)
            ids = np.unique(labels)
            self.records[image.key] = ImageRecord(
                state=REVIEWED if reviewed else SEGMENTED,
                model=model or record.model,
                objects=int(np.count_nonzero(ids)),
                updated=time.strftime("%Y-%m-%d %H:%M:%S"),
            )
            self._save_state()

    def _write(self, image: SeriesImage, labels: np.ndarray, table: dict | None) -> None:
        import tifffile

        self.labels_folder.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.labels_path(image),
            lambda p: tifffile.imwrite(p, labels, compression="zlib"),
        )
        if table is not None:
            write_boxes_table(self.boxes_path(image), table)

    def next_model_path(self) -> Path:
        """Where a model trained on this series goes:
        ``LABELS/models/FOLDER-1.safetensors``, numbered past those there."""
        folder, stem = self.labels_folder / "models", self.folder.name or "series"
        k = 1
        while (folder / f"{stem}-{k}.safetensors").exists():
            k += 1
        return folder / f"{stem}-{k}.safetensors"

    def mark_reviewed(self, index: int, reviewed: bool = True) -> None:
        """Record that the user checked an image's labels (they stay as saved)."""
        with self._lock:
            record = self.record(index)
            if record.state == NOT_SEGMENTED:
                raise InputError(f"{self.images[index].key}: has no labels to review yet")
            record.state = REVIEWED if reviewed else SEGMENTED
            record.updated = time.strftime("%Y-%m-%d %H:%M:%S")
            self._save_state()


def saved_result(labels: np.ndarray, objects: dict[int, tuple[str, float]]) -> InstanceResult:
    """An ``InstanceResult`` of saved labels as they are (ids kept, gaps and
    all; a stack's slices keep their ids), with the classes and scores saved
    beside them (``ImageSeries.read_objects``; objects painted by hand score 1)."""
    labels = np.asarray(labels)
    names = sorted({name for name, _ in objects.values() if name}) or ["object"]
    class_names = ["background", *names]
    planes = list(np.ndindex(*labels.shape[:-2])) if labels.ndim > 2 else [()]
    ids, boxes, stack_index = [], [], []
    for k, plane in enumerate(planes):
        present = np.unique(labels[plane])
        present = present[present > 0].astype(np.int64)
        ids.append(present)
        boxes.append(boxes_from_labels(labels[plane], present))
        stack_index.append(np.full(len(present), k, np.int64))
    label_ids = np.concatenate(ids)
    found = [objects.get(int(i), ("", 1.0)) for i in label_ids]
    return InstanceResult(
        labels=labels,
        label_ids=label_ids,
        boxes=np.concatenate(boxes).reshape(-1, 4),
        scores=np.array([score for _, score in found], np.float32),
        class_ids=np.array(
            [class_names.index(n) if n in class_names else 1 for n, _ in found], np.int64
        ),  # fmt: skip
        class_names=class_names,
        stack_index=np.concatenate(stack_index) if labels.ndim > 2 else None,
    )


def reviewed_stems(labels_folder) -> set[str] | None:
    """Stems of the reviewed images of a series whose labels are in
    ``labels_folder``, or None when it holds no series state (a plain folder
    of masks)."""
    path = Path(labels_folder) / STATE_FILE
    if not path.exists():
        return None
    try:
        records = json.loads(path.read_text()).get("images", {})
    except (OSError, ValueError, AttributeError):
        raise InputError(f"{path}: unreadable series state") from None
    return {
        SeriesImage(key, Path(key)).stem
        for key, record in records.items()
        if record.get("state") == REVIEWED
    }

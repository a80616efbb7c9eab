"""Image files in: TIFF, PNG and JPEG pixels with one-line errors, and the
pairing of images with their label files (``img_07.tif`` with
``img_07_labels.tif``) in folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..types import InputError
from .files import IMAGE_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Pixels of a TIFF, PNG or JPEG file (TIFF pages as stored).

    Raises InputError with one sentence for missing, empty, truncated or
    unreadable files.
    """
    import logging

    path = Path(path)
    if not path.exists():
        raise InputError("no such file")
    if path.stat().st_size == 0:
        raise InputError("the file is empty")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"unsupported format {path.suffix or '(none)'} (use TIFF, PNG or JPEG)")
    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # its warnings would repeat our one-line error
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            from skimage import io

            image = io.imread(path)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"cannot read image ({reason})") from None
    finally:
        tiff_log.setLevel(level)
    image = np.asarray(image)
    if image.size == 0 or image.ndim < 2:
        raise InputError("the file holds no pixels (empty or truncated image)")
    return image


LABEL_FILE_SUFFIXES = ("_labels", "_masks")  # allowed after the image's stem


def label_stem(path: Path) -> str:
    """``img_07`` for ``img_07.tif``, ``img_07_labels.tif`` or ``img_07_masks.png``."""
    stem = path.stem
    for suffix in LABEL_FILE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return stem


def paired_files(
    images_dir: str | os.PathLike, masks_dir: str | os.PathLike, both_label_files: bool = False
):
    """(stem, image path, mask path) of images with a mask of the same stem
    (a ``_labels`` or ``_masks`` suffix on the mask is allowed; on both files
    with ``both_label_files``, for comparing two folders of label images)."""
    masks = {}
    for folder in (images_dir, masks_dir):
        if not Path(folder).is_dir():
            raise InputError(f"{folder}: no such folder")
    for path in sorted(Path(masks_dir).iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            masks[label_stem(path)] = path
    pairs = []
    for path in sorted(Path(images_dir).iterdir()):
        stem = label_stem(path) if both_label_files else path.stem
        if path.suffix.lower() in IMAGE_SUFFIXES and stem in masks:
            pairs.append((stem, path, masks[stem]))
    return pairs


def read_instance_classes(path: Path) -> dict[int, str]:
    """``label_id,class_name`` rows of a CSV (multi-class instance training)."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"label_id", "class_name"} <= set(rows[0]):
        raise InputError(f"{path}: needs the columns label_id,class_name")
    return {int(r["label_id"]): r["class_name"].strip() for r in rows}

"""Input images for batch runs: the image files and zarr stores a path or a
folder names, and each one opened as an array (zarr stays on disk and is read
tile by tile)."""

from __future__ import annotations

from pathlib import Path

from .files import IMAGE_SUFFIXES
from .images import read_image
from .zarr_io import is_zarr, label_axes, open_zarr_image


def expand_inputs(paths: list[str]) -> list[Path]:
    """The images of ``paths``: files as given, folders' image files and
    zarr stores in name order (not their sub-folders)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not is_zarr(path):
            files.extend(
                sorted(
                    p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES or is_zarr(p)
                )
            )
        else:
            files.append(path)
    return files


def read_input(path: Path, channel_axis: int | None):
    """(image, channel axis, (axes, scale) for zarr outputs) of an input file;
    an OME-Zarr's own channel axis is used unless one is given."""
    if not is_zarr(path):
        return read_image(path), channel_axis, (None, None)
    opened = open_zarr_image(path)
    if channel_axis is None:
        channel_axis = opened.channel_axis
    return opened.array, channel_axis, label_axes(opened)

"""Zarr in and out: OME-Zarr (NGFF 0.4 and 0.5) images and plain zarr arrays
as lazy inputs, label images written as OME-Zarr label images.

Inputs stay on disk: the engine reads one tile at a time from the array.
Labels are written to ``NAME.partial`` and renamed when complete, so a
half-written output is never mistaken for a finished one.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..types import InputError

MAX_PIXELS = 2**40  # beyond this a declared shape is taken for corrupt metadata
SUPPORTED_KINDS = "biuf"  # bool, integers, floats
LABEL_CHUNK = 1024


@dataclass
class ZarrImage:
    """An opened zarr image: the lazy array, its axis names (None when the
    store does not say) and the pixel size per axis."""

    array: object
    axes: list[str] | None
    scale: list[float] | None

    @property
    def channel_axis(self) -> int | None:
        return self.axes.index("c") if self.axes and "c" in self.axes else None


def is_zarr(path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".zarr" or (
        path.is_dir() and any((path / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))
    )


def open_zarr_image(path) -> ZarrImage:
    """The full-resolution array of an OME-Zarr image, or a plain zarr array,
    checked (shape, dtype, chunks present) without reading its pixels."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise InputError("no such zarr store")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:
        raise InputError(f"not a readable zarr store ({_first_line(err)})") from None
    axes = scale = None
    if isinstance(node, zarr.Group):
        multiscales = _multiscales(dict(node.attrs))
        if not multiscales:
            raise InputError("a zarr group without OME-Zarr multiscales metadata")
        first = multiscales[0]
        dataset = first["datasets"][0]
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in first.get("axes", [])] or None
        scale = next(
            (
                t["scale"]
                for t in dataset.get("coordinateTransformations", [])
                if t.get("type") == "scale"
            ),
            None,
        )
        try:
            node = node[dataset["path"]]
        except KeyError:
            raise InputError(f"its multiscale level {dataset['path']!r} is missing") from None
    _check_array(node)
    if axes is not None and len(axes) != node.ndim:
        raise InputError(f"metadata names {len(axes)} axes for a {node.ndim}-D array")
    return ZarrImage(node, axes, scale)


def _multiscales(attrs: dict) -> list:
    if "ome" in attrs:  # NGFF 0.5
        return attrs["ome"].get("multiscales", [])
    return attrs.get("multiscales", [])


def _check_array(array) -> None:
    shape = tuple(int(s) for s in array.shape)
    if any(s <= 0 for s in shape) or int(np.prod(shape, dtype=np.float64)) > MAX_PIXELS:
        raise InputError(f"its metadata declares an implausible shape {shape}")
    dtype = np.dtype(array.dtype)
    if dtype.kind not in SUPPORTED_KINDS:
        raise InputError(f"unsupported pixel type {dtype} (use integers or floats)")
    # zarr leaves out chunks equal to the fill value; without a fill value
    # (zarr v2 "null") a missing chunk has no defined pixels: a broken copy
    if getattr(array, "fill_value", 0) is not None:
        return
    expected = int(np.prod([-(-s // c) for s, c in zip(shape, array.chunks)]))
    stored = getattr(array, "nchunks_initialized", expected)
    if stored < expected:
        raise InputError(
            f"{expected - stored} of its {expected} chunks are missing (an incomplete copy?)"
        )


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def write_label_image(path, labels: np.ndarray, axes=None, scale=None) -> Path:
    """``labels`` as an OME-Zarr (NGFF 0.4) label image at ``path``: level
    "0" at full resolution, chunked, with the input's spatial axes and scale.
    Refuses to replace an existing path."""
    with label_image_writer(path, labels.shape, labels.dtype, axes, scale) as array:
        array[...] = labels
    return Path(path)


@contextmanager
def label_image_writer(path, shape, dtype, axes=None, scale=None):
    """The level-"0" zarr array of a new OME-Zarr label image at ``path``,
    for the caller to fill (region by region, if it likes). It is written at
    PATH.partial and renamed to ``path`` only when the block ends without
    error, so a half-written output is never taken for a finished one."""
    import zarr

    path = refuse_existing(path)
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted run: never a finished output
    ndim = len(shape)
    axes = list(axes) if axes else _default_axes(ndim)
    scale = [float(s) for s in scale] if scale else [1.0] * ndim
    group = zarr.open_group(str(partial), mode="w", zarr_format=2)
    chunks = (1,) * (ndim - 2) + tuple(min(LABEL_CHUNK, s) for s in shape[-2:])
    dtype = dtype if np.dtype(dtype) in (np.uint16, np.uint32) else np.uint32
    array = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    try:
        yield array
    except BaseException:  # failed or cancelled: no half-written output is left
        shutil.rmtree(partial, ignore_errors=True)
        raise
    group.attrs.update(
        {
            "multiscales": [
                {
                    "version": "0.4",
                    "name": path.stem,
                    "axes": [_axis(a) for a in axes],
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [{"type": "scale", "scale": scale}],
                        }
                    ],
                }
            ],
            "image-label": {"version": "0.4", "source": {"image": "../"}},
        }
    )
    partial.rename(path)


def refuse_existing(path) -> Path:
    """``path`` as a Path, or an InputError when something is there already."""
    path = Path(path)
    if path.exists():
        raise InputError(f"{path.name} exists; remove it or choose another output folder")
    return path


def open_label_image(path, mode: str = "r+"):
    """The full-resolution array of an OME-Zarr label image (lazy)."""
    import zarr

    return zarr.open_group(str(path), mode=mode)["0"]


def _default_axes(ndim: int) -> list[str]:
    if ndim > 4:
        raise InputError(f"labels with {ndim} axes need axis names")
    return ["t", "z", "y", "x"][-ndim:]


def _axis(name: str) -> dict:
    return {"name": name, "type": {"t": "time", "c": "channel"}.get(name, "space")}


def label_axes(image: ZarrImage) -> tuple[list[str] | None, list[float] | None]:
    """The axes and scale of a label image made from ``image`` (no channel axis)."""
    if image.axes is None:
        return None, None
    keep = [i for i, a in enumerate(image.axes) if a != "c"]
    axes = [image.axes[i] for i in keep]
    scale = [image.scale[i] for i in keep] if image.scale else None
    return axes, scale

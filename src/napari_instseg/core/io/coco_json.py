"""COCO JSON: results and annotations in, results out.

RLE follows the COCO convention: run lengths over the mask flattened in
column-major (Fortran) order, starting with a run of zeros, compressed into
COCO's ASCII string form. All objects of a label image are encoded in one
pass over its pixels, not one full-size mask per object.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..types import InstanceResult


def rle_counts_to_string(counts: Iterable[int]) -> str:
    """COCO's compressed RLE string (pycocotools' ``rleToString``)."""
    counts = [int(c) for c in counts]
    chars = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def rle_string_to_counts(text: str) -> list[int]:
    """Inverse of ``rle_counts_to_string`` (pycocotools' ``rleFrString``)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode_labels(labels: np.ndarray) -> dict[int, dict]:
    """COCO RLE of every object of a 2D label image: ``{label_id: {"size", "counts"}}``."""
    height, width = labels.shape
    flat = np.asarray(labels).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [flat.size]])
    values = flat[starts]
    order = np.argsort(values, kind="stable")
    values, starts, ends = values[order], starts[order], ends[order]
    result = {}
    boundaries = np.flatnonzero(np.diff(values)) + 1
    for group in np.split(np.arange(len(values)), boundaries):
        label_id = int(values[group[0]])
        if label_id == 0:
            continue
        s, e = starts[group], ends[group]
        # alternating zeros/ones: gap before each run, then the run
        gaps = s - np.concatenate([[0], e[:-1]])
        counts = np.empty(2 * len(s), np.int64)
        counts[0::2], counts[1::2] = gaps, e - s
        counts = np.append(counts, flat.size - e[-1]) if e[-1] < flat.size else counts
        result[label_id] = {"size": [height, width], "counts": rle_counts_to_string(counts)}
    return result


def rle_decode(rle: dict) -> np.ndarray:
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = rle_string_to_counts(counts)
    flat = np.zeros(height * width, bool)
    position = 0
    for i, run in enumerate(counts):
        if i % 2:
            flat[position : position + run] = True
        position += run
    return flat.reshape((height, width), order="F")


class CocoBuilder:
    """Collects 2D results image by image into one COCO document.

    Categories are the results' class names after background, ids from 1.
    Each annotation carries ``bbox`` (x, y, w, h), ``area``, an RLE
    ``segmentation``, ``score`` and our ``label_id``, so a reader rebuilds
    the same label image. Only the encoded masks are kept, not the labels.
    """

    def __init__(self):
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.categories: dict[str, int] = {}

    def add(self, file_name: str, result: InstanceResult) -> None:
        if result.labels.ndim != 2:
            raise ValueError("COCO export takes 2D label images; export stacks slice by slice")
        height, width = result.labels.shape
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": file_name, "height": height, "width": width}
        )
        for name in result.class_names[1:]:
            self.categories.setdefault(name, len(self.categories) + 1)
        rles = rle_encode_labels(result.labels)
        areas = np.bincount(
            result.labels.ravel(), minlength=int(result.label_ids.max(initial=0)) + 1
        )
        for row, label_id in enumerate(result.label_ids):
            label_id = int(label_id)
            if label_id not in rles:
                continue
            y0, x0, y1, x1 = (int(v) for v in result.boxes[row])
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": self.categories[result.class_names[int(result.class_ids[row])]],
                    "segmentation": rles[label_id],
                    "area": int(areas[label_id]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                    "score": round(float(result.scores[row]), 5),
                    "label_id": label_id,
                }
            )

    def document(self) -> dict:
        return {
            "info": {"description": "napari-instseg segmentation"},
            "images": self.images,
            "categories": [
                {"id": i, "name": n, "supercategory": "object"} for n, i in self.categories.items()
            ],
            "annotations": self.annotations,
        }


def coco_document(entries: Iterable[tuple[str, InstanceResult]]) -> dict:
    """COCO dict of (file name, 2D result) pairs; see ``CocoBuilder``."""
    builder = CocoBuilder()
    for file_name, result in entries:
        builder.add(file_name, result)
    return builder.document()


@dataclass
class CocoImage:
    file_name: str
    result: InstanceResult


def read_coco(document: dict | str) -> list[CocoImage]:
    """Rebuild label images (and boxes, scores, classes) from a COCO document.

    Ids come from our ``label_id`` when present, else from the annotation
    order; overlapping masks are painted in order (later wins).
    """
    from ..labels.postprocess import boxes_from_labels, smallest_label_dtype

    if isinstance(document, str):
        with open(document) as f:
            document = json.load(f)
    if not isinstance(document, dict) or not {"images", "annotations"} <= document.keys():
        raise ValueError("not a COCO document (needs 'images' and 'annotations')")
    categories = {c["id"]: c["name"] for c in document.get("categories", [])}
    ordered = sorted(categories)
    class_names = ["background", *(categories[i] for i in ordered)]
    class_index = {cid: i + 1 for i, cid in enumerate(ordered)}
    by_image: dict[int, list[dict]] = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    images = []
    for image in document["images"]:
        annotations = by_image.get(image["id"], [])
        ids = [a.get("label_id", i + 1) for i, a in enumerate(annotations)]
        dtype = smallest_label_dtype(max(ids, default=0))
        labels = np.zeros((image["height"], image["width"]), dtype)
        for label_id, annotation in zip(ids, annotations):
            segmentation = annotation["segmentation"]
            if isinstance(segmentation, dict):
                labels[rle_decode(segmentation)] = label_id
            else:  # polygons
                from skimage.draw import polygon

                for poly in segmentation:
                    xy = np.asarray(poly, float).reshape(-1, 2)
                    rr, cc = polygon(xy[:, 1], xy[:, 0], labels.shape)
                    labels[rr, cc] = label_id
        label_ids = np.asarray(ids, np.int64)
        result = InstanceResult(
            labels=labels,
            label_ids=label_ids,
            boxes=boxes_from_labels(labels, label_ids) if len(ids) else np.zeros((0, 4), int),
            scores=np.asarray([a.get("score", 1.0) for a in annotations], np.float32),
            class_ids=np.asarray(
                [class_index.get(a["category_id"], 1) for a in annotations], np.int64
            ),
            class_names=class_names if len(class_names) > 1 else ["background", "object"],
        )
        images.append(CocoImage(image.get("file_name", f"image {image['id']}"), result))
    return images

"""COCO export/import, measurements and napari's own label saving."""

import json

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils

from conftest import disc_image
from napari_instseg._io import (
    get_coco_reader,
    result_from_layer,
    write_coco,
    write_measurements,
)
from napari_instseg.cli import main
from napari_instseg.core.io.coco_json import coco_document, read_coco, rle_encode_labels
from napari_instseg.core.labels.postprocess import instance_result_from_labels


def _labels(seed=0, shape=(61, 83), n=12):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 5), rng.integers(0, shape[1] - 5)
        labels[y : y + rng.integers(1, 12), x : x + rng.integers(1, 15)] = i
    labels[0, :] = n + 1  # touches the image edge
    return labels


def test_rle_matches_pycocotools_both_ways():
    labels = _labels()
    for label_id, rle in rle_encode_labels(labels).items():
        mask = labels == label_id
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle["counts"] == reference["counts"].decode()
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_coco_document_loads_in_pycocotools_and_round_trips(tmp_path):
    from pycocotools.coco import COCO

    labels = _labels()
    result = instance_result_from_labels(
        labels, ["background", "nucleus"], scores=np.linspace(1, 0.5, labels.max())
    )
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco_document([("a.tif", result)])))
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == labels.max()
    for ann in anns:
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), labels == ann["label_id"])
        y0, x0, y1, x1 = result.boxes[ann["label_id"] - 1]
        assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
    back = read_coco(str(path))[0].result
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_allclose(back.scores, result.scores, atol=1e-5)
    np.testing.assert_array_equal(back.boxes, result.boxes)


def test_predict_writes_coco_for_all_inputs(tmp_path, tiny_unet_path):
    tifffile.imwrite(tmp_path / "a.tif", np.random.rand(40, 40).astype(np.float32))
    tifffile.imwrite(tmp_path / "b.tif", np.random.rand(2, 30, 30).astype(np.float32))
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "a.tif"),
                str(tmp_path / "b.tif"),
                "--model",
                str(tiny_unet_path),
                "-o",
                str(out),
                "--coco",
                str(out / "all.json"),
            ]
        )
        == 0
    )
    document = json.loads((out / "all.json").read_text())
    assert [i["file_name"] for i in document["images"]] == ["a.tif", "b.tif[0]", "b.tif[1]"]
    images = read_coco(str(out / "all.json"))
    np.testing.assert_array_equal(
        images[0].result.labels > 0, tifffile.imread(out / "a_labels.tif") > 0
    )


def test_napari_writer_and_reader_round_trip(tmp_path):
    from napari_instseg import _layers

    labels = _labels(1)
    result = instance_result_from_labels(labels, ["background", "nucleus"])
    data, meta, _ = _layers.labels_layer(result, "cells", {})
    import pandas as pd

    meta["features"] = pd.DataFrame(meta["features"])
    path = str(tmp_path / "cells.json")
    assert write_coco(path, data, meta) == [path]
    reader = get_coco_reader(path)
    assert reader is not None and get_coco_reader(str(tmp_path / "x.tif")) is None
    (labels_data, labels_meta, kind), (boxes_data, boxes_meta, box_kind) = reader(path)
    assert kind == "labels" and box_kind == "shapes"
    np.testing.assert_array_equal(labels_data, labels)
    assert len(boxes_data) == labels.max()
    assert list(boxes_meta["features"]["label_id"]) == list(range(1, labels.max() + 1))


def test_measurements_csv(tmp_path):
    import csv

    image, truth = disc_image((50, 60), [(20, 20), (35, 45)], 6, value=3.0)
    result = instance_result_from_labels(truth, ["background", "nucleus"])
    import pandas as pd

    from napari_instseg import _layers

    _, meta, _ = _layers.labels_layer(result, "cells", {})
    meta["features"] = pd.DataFrame(meta["features"])
    path = str(tmp_path / "m.csv")
    write_measurements(path, [(truth, meta, "labels"), (image, {}, "image")])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label_id"] for r in rows] == ["1", "2"]
    assert float(rows[0]["mean_intensity"]) == pytest.approx(3.0)
    assert float(rows[0]["centroid_y"]) == pytest.approx(20, abs=0.01)
    assert rows[0]["class_name"] == "nucleus" and int(rows[0]["area"]) > 100


def test_result_from_plain_labels_layer_without_features():
    labels = _labels(2)
    result = result_from_layer(labels, {})
    assert result.class_names == ["background", "object"]
    assert len(result) == len(np.unique(labels)) - 1


@pytest.mark.gui
def test_napari_save_keeps_ids_and_dtype_beyond_65535(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.arange(300 * 250, dtype=np.uint32).reshape(300, 250) + 1
    labels[0, 0] = 0
    layer = viewer.add_labels(labels, name="many")
    data = layer.data.copy()
    data[5, 5] = 123456  # a hand edit
    layer.data = data
    path = tmp_path / "many.tif"
    layer.save(str(path))
    saved = tifffile.imread(path)
    assert saved.dtype == np.uint32
    np.testing.assert_array_equal(saved, data)


def test_per_channel_measurements_equal_numpy_on_a_multichannel_image():
    from napari_instseg.core.io.tables import measurements, object_table
    from napari_instseg.core.labels.postprocess import instance_result_from_labels

    rng = np.random.default_rng(3)
    labels = np.zeros((40, 50), np.int32)
    labels[2:12, 3:20] = 1
    labels[20:35, 10:18] = 2
    labels[15:30, 30:48] = 4  # an id gap: 3 is not used
    image = rng.integers(0, 4000, (40, 50, 3)).astype(np.uint16)
    names = ["dapi", "gfp", "mcherry"]
    rows = {row["label_id"]: row for row in measurements(labels, image, channel_names=names)}
    result = instance_result_from_labels(labels, ["background", "nucleus"])
    table = object_table(result, image, names)
    for label_id in (1, 2, 4):
        inside = labels == label_id
        row = next(k for k, i in enumerate(table["label_id"]) if i == label_id)
        for c, name in enumerate(names):
            values = image[..., c][inside].astype(np.float64)
            for statistic, expected in (
                ("mean", values.mean()), ("median", np.median(values)), ("sum", values.sum())
            ):  # fmt: skip
                column = f"{statistic}_intensity_{name}"
                assert rows[label_id][column] == pytest.approx(expected, rel=1e-6)
                assert table[column][row] == pytest.approx(expected, rel=1e-9)
        assert rows[label_id]["mean_intensity"] == pytest.approx(image[inside].mean(), rel=1e-6)
    gray = measurements(labels, image[..., 1])
    assert gray[0]["sum_intensity"] == pytest.approx(image[..., 1][labels == 1].sum())
    assert "mean_intensity_gfp" not in gray[0]

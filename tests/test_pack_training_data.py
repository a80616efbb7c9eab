"""scripts/pack_training_data.py: the data a GPU lease trains on, packed small."""

import csv
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from make_test_split import SPLIT_FILE, read_split  # noqa: E402
from pack_training_data import pack, unpack  # noqa: E402

COLUMNS = ["id", "split", "height", "width", "channels", "dtype", "gray_rgb", "n_instances"]


def _shared_layout(root: Path, rows: list[tuple[str, str, bool]]) -> dict:
    """A tiny dataset in the shared layout: (id, split, gray) rows."""
    rng = np.random.default_rng(0)
    written = {}
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for image_id, split, gray in rows:
            for sub in ("images", "masks"):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
            if gray:  # noise: lossless packing must keep even that
                pixels = rng.integers(0, 256, (40, 50, 1), dtype=np.uint8)
                image = np.repeat(pixels, 3, axis=-1)
            else:  # smooth, as stained tissue is at this scale
                y, x = np.mgrid[:40, :50]
                image = np.stack([4 * y, 4 * x, 100 + y + x], axis=-1).astype(np.uint8)
            labels = np.zeros((40, 50), np.uint16)
            labels[5:15, 5:15], labels[20:30, 30:45] = 1, 300
            tifffile.imwrite(root / split / "images" / f"{image_id}.tif", image)
            tifffile.imwrite(root / split / "masks" / f"{image_id}.tif", labels)
            writer.writerow([image_id, split, 40, 50, 3, "uint8", gray, 2])
            written[image_id] = (image, labels)
    return written


def test_packing_leaves_the_test_split_out_and_unpacks_the_shared_layout(tmp_path):
    test_id = read_split(SPLIT_FILE)[0]["id"]
    source, packed, unpacked = tmp_path / "shared", tmp_path / "packed", tmp_path / "unpacked"
    source.mkdir()
    rows = [(test_id, "train", True), ("gray1", "train", True), ("colour1", "val", False)]
    written = _shared_layout(source, rows)
    pack(source, packed)
    assert not any(test_id in p.name for p in packed.iterdir())
    unpack(packed, unpacked)
    assert (unpacked / "manifest.csv").read_bytes() == (source / "manifest.csv").read_bytes()
    assert not (unpacked / "train" / "images" / f"{test_id}.tif").exists()
    for image_id, split in (("gray1", "train"), ("colour1", "val")):
        image = tifffile.imread(unpacked / split / "images" / f"{image_id}.tif")
        labels = tifffile.imread(unpacked / split / "masks" / f"{image_id}.tif")
        expected_image, expected_labels = written[image_id]
        np.testing.assert_array_equal(labels, expected_labels)  # masks are exact
        assert labels.dtype == np.uint16 and image.shape == expected_image.shape
        if image_id == "gray1":  # gray images are exact, three channels again
            np.testing.assert_array_equal(image, expected_image)
        else:  # colour travels as JPEG: close, not equal
            assert np.abs(image.astype(int) - expected_image).mean() < 3

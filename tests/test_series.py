"""An image series on disk: segment a folder, review, save, reopen, train
(the Qt-free core under the Image series widget)."""

import json

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from conftest import disc_image
from napari_instseg.core.draining import drain
from napari_instseg.core.series.folder import (
    NOT_SEGMENTED,
    REVIEWED,
    SEGMENTED,
    STATE_FILE,
    ImageSeries,
)
from napari_instseg.core.series.runs import (
    ImageFailed,
    ImageSegmented,
    iter_segment_series,
    reviewed_diameter,
    reviewed_samples,
)
from napari_instseg.core.types import InputError

CENTRES = [[(20, 20), (20, 60), (60, 40)], [(30, 30), (50, 70)], [(15, 15), (65, 65), (40, 40)]]


def _folder(tmp_path, n=3):
    folder = tmp_path / "images"
    folder.mkdir()
    truths = []
    for k in range(n):
        image, labels = disc_image((80, 96), CENTRES[k % 3], 8)
        tifffile.imwrite(folder / f"img{k}.tif", (image * 1000).astype(np.uint16))
        truths.append(labels)
    return folder, truths


def _same_objects(a, b):
    return len(np.unique(a)) == len(np.unique(b)) and np.array_equal(a > 0, b > 0)


def test_a_segmented_series_is_saved_and_found_again(tmp_path, oracle_unet):
    folder, truths = _folder(tmp_path)
    series = ImageSeries(folder)
    assert series.summary() == "3 images: 3 not segmented"
    events = []
    run = drain(iter_segment_series(series, oracle_unet), events.append)
    assert [e.image for e in events if isinstance(e, ImageSegmented)] == [0, 1, 2]
    assert run.segmented == [0, 1, 2] and not run.failed
    for k, truth in enumerate(truths):
        assert _same_objects(series.read_labels(k), truth)
        assert series.record(k).objects == len(CENTRES[k]) and series.record(k).model == "oracle"
    assert (folder / "labels" / "img0_labels.tif").exists()
    assert (folder / "labels" / "img0_boxes.csv").exists()
    again = ImageSeries(folder)  # napari closed and the folder opened again
    assert again.summary() == "3 images: 3 segmented"
    assert set(again.read_objects(1)) == {1, 2}


def test_resegmenting_never_overwrites_a_reviewed_image(tmp_path, oracle_unet):
    folder, _ = _folder(tmp_path)
    series = ImageSeries(folder)
    drain(iter_segment_series(series, oracle_unet))
    corrected = series.read_labels(0)
    corrected[corrected == 2] = 0  # the user deleted an object
    series.save(0, corrected, reviewed=True)
    saved = (folder / "labels" / "img0_labels.tif").read_bytes()
    run = drain(iter_segment_series(ImageSeries(folder), oracle_unet, redo_segmented=True))
    assert run.segmented == [1, 2] and run.skipped_reviewed == 0
    run = drain(iter_segment_series(series, oracle_unet, indices=[0, 1]))
    assert run.segmented == [1] and run.skipped_reviewed == 1
    assert (folder / "labels" / "img0_labels.tif").read_bytes() == saved
    with pytest.raises(InputError, match="reviewed"):
        series.save(0, np.zeros((80, 96), np.uint16), reviewed=False)
    assert ImageSeries(folder).record(0).state == REVIEWED


def test_bad_files_are_skipped_and_listed_the_rest_go_on(tmp_path, oracle_unet):
    folder, _ = _folder(tmp_path, n=2)
    (folder / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    rgb = np.zeros((50, 70, 3), np.uint8)
    rgb[10:20, 10:20] = 255
    skio.imsave(folder / "colour.png", rgb, check_contrast=False)
    tifffile.imwrite(folder / "floats.tif", np.random.rand(64, 40).astype(np.float32))
    series = ImageSeries(folder)
    events = []
    run = drain(iter_segment_series(series, oracle_unet), events.append)
    failed = [e for e in events if isinstance(e, ImageFailed)]
    assert [series.images[e.image].key for e in failed] == ["broken.tif"]
    assert run.failed["broken.tif"]  # its one-line reason
    assert len(run.segmented) == 4  # mixed sizes, RGB and gray, uint8/uint16/float32
    assert series.read_labels(series.indices(SEGMENTED)[0]) is not None
    broken = [i.key for i in series.images].index("broken.tif")
    assert series.record(broken).state == NOT_SEGMENTED


def test_folders_that_cannot_be_a_series_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        ImageSeries(tmp_path / "empty")
    with pytest.raises(InputError, match="no such folder"):
        ImageSeries(tmp_path / "missing")
    folder, _ = _folder(tmp_path)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(InputError, match="not a folder"):
        ImageSeries(folder, labels_folder=tmp_path / "a-file")
    # root ignores permission bits, so the check itself is what is tested here
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(InputError, match="read-only"):
        ImageSeries(folder)


def test_sub_folders_and_a_damaged_state_file(tmp_path, oracle_unet):
    folder, _ = _folder(tmp_path, n=1)
    (folder / "day2").mkdir()
    image, _ = disc_image((64, 64), [(30, 30)], 8)
    tifffile.imwrite(folder / "day2" / "img0.tif", image)
    assert len(ImageSeries(folder)) == 1
    series = ImageSeries(folder, recursive=True)
    assert [i.key for i in series.images] == ["day2/img0.tif", "img0.tif"]
    drain(iter_segment_series(series, oracle_unet))
    assert (folder / "labels" / "day2__img0_labels.tif").exists()
    assert len(ImageSeries(folder, recursive=True)) == 2  # labels/ is not part of it
    (folder / "labels" / STATE_FILE).write_text("{not json")
    again = ImageSeries(folder, recursive=True)
    assert again.summary() == "2 images: 2 segmented"  # the labels on disk still count
    assert (folder / "labels" / f"{STATE_FILE}.unreadable").exists()


def test_reviewed_images_give_the_object_size_and_the_training_samples(tmp_path, oracle_unet):
    folder, truths = _folder(tmp_path)
    series = ImageSeries(folder)
    drain(iter_segment_series(series, oracle_unet))
    with pytest.raises(InputError, match="review"):
        reviewed_samples(series, oracle_unet.info)
    series.mark_reviewed(0)
    series.save(2, truths[2], reviewed=True)
    samples = reviewed_samples(series, oracle_unet.info)
    assert [s.name for s in samples] == ["img0", "img2"]
    assert samples[0].image.shape == (80, 96, 3) and samples[1].object_count == 3
    assert reviewed_diameter(series) == pytest.approx(
        2 * np.sqrt((truths[0] == 1).sum() / np.pi), 0.01
    )
    state = json.loads((folder / "labels" / STATE_FILE).read_text())
    assert state["images"]["img0.tif"]["state"] == REVIEWED


def test_train_command_takes_a_series_reviewed_images_only(tmp_path, oracle_unet, tiny_unet_path):
    from napari_instseg.cli import main

    folder, truths = _folder(tmp_path)
    series = ImageSeries(folder)
    drain(iter_segment_series(series, oracle_unet))
    for k in (0, 1):
        series.save(k, truths[k], reviewed=True)
    args = ["train", "--model", str(tiny_unet_path), "--images", str(folder),
            "--masks", str(folder / "labels"), "--epochs", "1", "-q",
            "--run-dir", str(tmp_path / "run"), "-o", str(tmp_path / "m.safetensors")]  # fmt: skip
    assert main(args) == 0
    from napari_instseg.core.models.checkpoint import read_metadata

    training = read_metadata(tmp_path / "m.safetensors")["training"]
    images = training["train_images"] + training["val_images"]
    assert sorted(images) == ["img0", "img1"]

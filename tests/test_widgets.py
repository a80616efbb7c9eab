"""The dock widgets in a real napari viewer (pytest-xvfb gives the display)."""

import numpy as np
import pytest

from conftest import disc_image
from napari_instseg._layers import TAG

pytestmark = pytest.mark.gui

WIDGETS = ["Instance segmentation (Mask R-CNN)", "Semantic segmentation (U-Net)"]


@pytest.mark.parametrize("name", WIDGETS)
def test_widgets_open_from_the_manifest(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-instseg", name)
    assert dock is not None and widget.run_button.enabled


def test_opening_a_widget_leaves_torch_to_a_background_thread():
    """Opening does not freeze napari to import torch; it loads afterwards."""
    import subprocess
    import sys

    code = """
import sys, time
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=False)
_, widget = viewer.window.add_plugin_dock_widget(
    "napari-instseg", "Instance segmentation (Mask R-CNN)")
print("torch when open:", "torch" in sys.modules)
deadline = time.monotonic() + 120
from napari_instseg._widgets._common import torch_loaded_in_background
from napari_instseg.core.devices import available_devices
while not torch_loaded_in_background() and time.monotonic() < deadline:
    QApplication.processEvents()
    time.sleep(0.01)
print("loaded in the background:", "torchvision.models.detection" in sys.modules)
while widget.device.choices != tuple(available_devices()) and time.monotonic() < deadline:
    QApplication.processEvents()
    time.sleep(0.01)
print("devices:", widget.device.choices == tuple(available_devices()))
viewer.close()
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    ).stdout
    assert "torch when open: False" in out, out
    assert "loaded in the background: True" in out and "devices: True" in out, out


@pytest.mark.parametrize("key,ndim", [("nuclei", 2), ("nuclei-histology", 3)])
def test_sample_data_opens(make_napari_viewer, key, ndim):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-instseg", key)
    assert layers[0].data.ndim == ndim and layers[0].name == key


def _semantic_widget(viewer, model_path):
    from napari_instseg._widgets.segment import SemanticSegmentationWidget
    from napari_instseg.core.models.registry import register_checkpoint

    name = register_checkpoint(model_path)
    widget = SemanticSegmentationWidget(viewer)
    widget.model.reset_choices()
    widget.model.value = name
    return widget


@pytest.fixture(params=["semantic", "instance"])
def make_widget(request, tiny_unet_path, tiny_maskrcnn_path):
    """Either segmentation widget with a tiny checkpoint (both widgets get
    the same end-to-end tests)."""
    from napari_instseg._widgets.segment import InstanceSegmentationWidget

    def make(viewer):
        if request.param == "semantic":
            return _semantic_widget(viewer, tiny_unet_path)
        from napari_instseg.core.models.registry import register_checkpoint

        name = register_checkpoint(tiny_maskrcnn_path)
        widget = InstanceSegmentationWidget(viewer)
        widget.model.value = name
        widget.score_threshold.value = 0.0
        return widget

    make.kind = request.param
    return make


def test_blocking_run_adds_layers_with_source_geometry(make_napari_viewer, make_widget):
    viewer = make_napari_viewer()
    image, _ = disc_image((64, 80), [(20, 20), (40, 50)], 6)
    viewer.add_image(image, name="cells", scale=(0.5, 0.25), translate=(10, 20))
    widget = make_widget(viewer)
    layers = widget.run(blocking=True)
    model = widget.model.value
    expected = [f"cells instances ({model})", f"cells boxes ({model})"]
    if make_widget.kind == "semantic":
        expected.insert(0, f"cells classes ({model})")
    assert [layer.name for layer in layers] == expected
    for layer in layers:
        np.testing.assert_allclose(layer.scale[-2:], (0.5, 0.25))
        np.testing.assert_allclose(layer.translate[-2:], (10, 20))
        assert TAG in layer.metadata
    labels, boxes = layers[-2], layers[-1]
    assert len(boxes.data) == len(labels.features) == len(np.unique(labels.data)) - 1


def test_rerun_keeps_user_edits(make_napari_viewer, make_widget):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(64, 64), name="img")
    widget = make_widget(viewer)
    first = widget.run(blocking=True)
    again = widget.run(blocking=True)
    assert all(a is b for a, b in zip(first, again))  # untouched: updated in place
    edited = first[-2]
    data = edited.data.copy()
    data[:5, :5] = 99
    edited.data = data
    third = widget.run(blocking=True)
    assert third[-2] is not edited and third[-2].name.endswith("[new]")
    assert (edited.data[:5, :5] == 99).all(), "the user's edit survives"


def test_threaded_run_reports_progress_and_finishes(make_napari_viewer, qtbot, tiny_unet_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(200, 200), name="img")
    widget = _semantic_widget(viewer, tiny_unet_path)
    widget.tile_size.value = 64
    worker = widget.run(blocking=False)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    qtbot.waitUntil(lambda: "objects found" in widget.status.value, timeout=5000)
    assert "img boxes (tiny-unet)" in viewer.layers
    assert widget.progress.value == widget.progress.max > 1
    assert widget.run_button.enabled


def test_background_work_keeps_the_collector_off_older_objects(make_napari_viewer, qtbot):
    """A full collection walks napari's and torch's objects with the GIL held
    (0.3 s of a frozen window): a worker's run keeps it off the objects that
    existed before; a layer the user removes meanwhile is still freed."""
    import gc
    import threading
    import weakref

    from napari.qt.threading import create_worker

    from napari_instseg._widgets._common import freeze_long_lived_objects_while

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64)), name="old")
    old_layer = weakref.ref(layer)
    may_finish = threading.Event()
    worker = create_worker(lambda: may_finish.wait(60), _start_thread=False)
    freeze_long_lived_objects_while(worker, viewer)
    worker.start()
    try:
        assert gc.get_freeze_count() > 10_000
        viewer.layers.remove(layer)
        del layer
        qtbot.waitUntil(lambda: old_layer() is None, timeout=5000)  # collected on removal
        assert gc.get_freeze_count() > 10_000  # and the rest frozen again
    finally:
        with qtbot.waitSignal(worker.finished, timeout=30000):
            may_finish.set()
    assert gc.get_freeze_count() == 0


def test_cancel_leaves_no_layer(make_napari_viewer, qtbot, make_widget):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(1024, 1024), name="big")
    widget = make_widget(viewer)
    widget.tile_size.value = 64
    worker = widget.run(blocking=False)
    worker.yielded.connect(lambda step: step.done == 2 and widget.cancel())
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert widget.status.value.startswith("Cancelled")


def test_errors_show_as_one_sentence(make_napari_viewer, tiny_unet_path, tmp_path):
    import shutil

    from napari_instseg.core.types import ModelError

    copy = tmp_path / "gone.safetensors"
    shutil.copy(tiny_unet_path, copy)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(40, 40), name="img")
    widget = _semantic_widget(viewer, copy)
    copy.unlink()  # e.g. a checkpoint on a network drive that went away
    with pytest.raises(ModelError):
        widget.run(blocking=True)
    assert widget.status.value.startswith("Error:") and "no such checkpoint" in widget.status.value
    assert "\n" not in widget.status.value


def test_instance_widget_on_rgb_with_a_checkpoint_file(
    make_napari_viewer, tiny_maskrcnn_path, tmp_path, monkeypatch
):
    from napari_instseg._widgets.segment import InstanceSegmentationWidget

    monkeypatch.setenv("NAPARI_INSTSEG_CONFIG_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.add_image(np.random.randint(0, 255, (96, 96, 3), np.uint8), name="he", rgb=True)
    widget = InstanceSegmentationWidget(viewer)
    assert widget.load_checkpoint(tiny_maskrcnn_path) == "tiny-maskrcnn"
    assert str(tiny_maskrcnn_path.resolve()) in (tmp_path / "checkpoints.json").read_text()
    widget.score_threshold.value = 0.0
    widget.show_scores.value = True
    labels, boxes = widget.run(blocking=True)
    assert labels.data.shape == (96, 96)
    assert list(boxes.features.columns) == ["label_id", "class_name", "score"]
    assert len(boxes.data) == len(labels.features)
    assert set(labels.features.columns) >= {
        "index",
        "label",
        "class_name",
        "score",
        "area",
        "mean_intensity",
    }
    # a second widget (a later session) lists the remembered checkpoint
    assert "tiny-maskrcnn" in InstanceSegmentationWidget(viewer).model.choices


def test_z_stack_whole_and_current_slice(make_napari_viewer, make_widget):
    viewer = make_napari_viewer()
    image, _ = disc_image((48, 48), [(20, 20)], 6)
    stack = np.stack([image * (z % 2) for z in range(4)])  # discs on odd slices
    viewer.add_image(stack, name="z", scale=(2.0, 0.5, 0.5))
    widget = make_widget(viewer)
    assert widget.scope.enabled
    *_, labels, boxes = widget.run(blocking=True)
    assert labels.data.shape == (4, 48, 48)
    assert boxes.ndim == 3
    if len(boxes.data):
        assert np.all(np.asarray(boxes.data).reshape(-1, 3)[:, 0] % 1 == 0)
    viewer.dims.set_point(0, 2 * 3.0)  # world z = 6 -> slice 3
    widget.scope.value = "current slice"
    edited = labels.data.copy()
    edited[0, 0, 0] = 7  # an edit: the whole-stack result must survive
    labels.data = edited
    *_, slice_labels, _ = widget.run(blocking=True)
    assert slice_labels.data.shape == (1, 48, 48)
    assert slice_labels.translate[0] == pytest.approx(6.0)
    assert labels.data[0, 0, 0] == 7


def test_selecting_a_box_shows_its_instance_and_back(make_napari_viewer):
    from napari_instseg import _layers
    from napari_instseg._widgets.result_layers import link_boxes_and_labels
    from napari_instseg.core.labels.postprocess import instance_result_from_labels

    _, truth = disc_image((64, 64), [(16, 16), (45, 45), (16, 48)], 6)
    result = instance_result_from_labels(truth, ["background", "nucleus"])
    viewer = make_napari_viewer()
    data, kwargs, _ = _layers.labels_layer(result, "inst", {})
    labels = viewer.add_labels(data, **kwargs)
    data, kwargs, _ = _layers.boxes_layer(result, "boxes", {})
    boxes = viewer.add_shapes(data, **kwargs)
    link_boxes_and_labels(labels, boxes)
    boxes.selected_data = {1}
    assert labels.selected_label == 2 and labels.show_selected_label
    labels.selected_label = 3
    assert boxes.selected_data == {2}
    boxes.selected_data = set()
    assert not labels.show_selected_label


def test_evaluate_widget_table_and_error_layers(make_napari_viewer):
    from napari_instseg._widgets.evaluate import EvaluateWidget

    _, truth = disc_image((64, 64), [(16, 16), (45, 45), (16, 48)], 6)
    pred = truth.copy()
    pred[pred == 3] = 0  # missed object
    pred[50:56, 5:11] = 9  # spurious object
    viewer = make_napari_viewer()
    viewer.add_labels(truth, name="truth")
    viewer.add_labels(pred, name="pred")
    widget = EvaluateWidget(viewer)
    widget.ground_truth.value = viewer.layers["truth"]
    widget.prediction.value = viewer.layers["pred"]
    summary = widget.evaluate()
    assert summary["ap"][0] == pytest.approx(2 / 4)
    assert widget.table.data.to_list()[0][:2] == ["0.50", "0.500"]
    fp = viewer.layers["false positives (pred)"].data
    fn = viewer.layers["false negatives (truth)"].data
    assert set(np.unique(fp)) == {0, 9} and set(np.unique(fn)) == {0, 3}
    pred2 = pred.copy()
    pred2[pred2 == 9] = 0
    viewer.layers["pred"].data = pred2
    widget.evaluate()  # updates the error layers in place
    assert set(np.unique(viewer.layers["false positives (pred)"].data)) == {0}
    assert "false positives (pred) [new]" not in viewer.layers


def test_train_widget_fine_tunes_on_viewer_pairs_and_registers(
    make_napari_viewer, tiny_unet_path, tmp_path, monkeypatch
):
    from napari_instseg._widgets.segment import SemanticSegmentationWidget
    from napari_instseg._widgets.train import TrainWidget
    from napari_instseg.core.models.registry import register_checkpoint

    monkeypatch.setenv("NAPARI_INSTSEG_CONFIG_DIR", str(tmp_path))
    register_checkpoint(tiny_unet_path)
    viewer = make_napari_viewer()
    segmenter = SemanticSegmentationWidget(viewer)
    for i in range(3):
        image, labels = disc_image((64, 64), [(15 + 5 * i, 20), (45, 40)], 6)
        viewer.add_image(image, name=f"img{i}")
        viewer.add_labels(labels, name=f"corrected{i}")
    widget = TrainWidget(viewer)
    for i in range(3):
        widget.add_pair(viewer.layers[f"img{i}"], viewer.layers[f"corrected{i}"])
    widget.add_pair(viewer.layers["img0"], viewer.add_labels(np.zeros((5, 5), int)))
    assert "differ in shape" in widget.status.value and len(widget.pairs) == 3
    widget.base_model.value = "tiny-unet"
    widget.epochs.value = 3
    widget.output.value = str(tmp_path / "mine.safetensors")
    name, path, score = widget.train(blocking=True)
    assert name == "mine" and path.exists() and 0 <= score <= 1
    assert "before" in widget.status.value and "after" in widget.status.value
    assert len(widget._history["loss"]) >= 1 and widget._history["val"]
    assert "mine" in segmenter.model.choices  # registered at once


def test_train_widget_cancel_saves_nothing(make_napari_viewer, qtbot, tiny_unet_path, tmp_path):
    from napari_instseg._widgets.train import TrainWidget
    from napari_instseg.core.models.registry import register_checkpoint
    from napari_instseg.core.training.loop import TrainingStep

    register_checkpoint(tiny_unet_path)
    viewer = make_napari_viewer()
    image, labels = disc_image((64, 64), [(20, 20)], 6)
    widget = TrainWidget(viewer)
    widget.add_pair(viewer.add_image(image), viewer.add_labels(labels))
    widget.base_model.value = "tiny-unet"
    widget.epochs.value = 1000
    widget.output.value = str(tmp_path / "never.safetensors")
    worker = widget.train(blocking=False)
    worker.yielded.connect(
        lambda m: isinstance(m, TrainingStep) and m.progress.done >= 2 and widget.cancel()
    )
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass
    assert not (tmp_path / "never.safetensors").exists()
    assert widget.status.value.startswith("Cancelled")


def test_source_layer_removed_during_a_run(make_napari_viewer, qtbot, tiny_unet_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(300, 300), name="gone", scale=(2, 2))
    widget = _semantic_widget(viewer, tiny_unet_path)
    widget.tile_size.value = 64
    worker = widget.run(blocking=False)
    removed = []

    def remove(step):
        if not removed:
            removed.append(True)
            viewer.layers.remove("gone")

    worker.yielded.connect(remove)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    qtbot.waitUntil(lambda: "objects found" in widget.status.value, timeout=5000)
    assert "gone instances (tiny-unet)" in viewer.layers
    assert tuple(viewer.layers["gone instances (tiny-unet)"].scale) == (2, 2)
    assert "removed" in widget.status.value


def test_painting_on_a_result_protects_it(make_napari_viewer, tiny_unet_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(64, 64), name="img")
    widget = _semantic_widget(viewer, tiny_unet_path)
    _, labels, boxes = widget.run(blocking=True)
    labels.paint((10, 10), 42)  # the brush tool's code path
    assert 42 in boxes.features["label_id"].to_numpy()  # the linked boxes followed
    _, labels_again, boxes_again = widget.run(blocking=True)
    assert labels_again is not labels and labels.data[10, 10] == 42
    assert boxes_again is not boxes and 42 in boxes.features["label_id"].to_numpy()


def test_an_untouched_result_is_updated_in_place_without_resegmenting(make_napari_viewer):
    from napari_instseg._sample_data import load_sample
    from napari_instseg._widgets.result_links import link_of
    from napari_instseg._widgets.segment import SemanticSegmentationWidget

    viewer = make_napari_viewer()
    viewer.add_image(load_sample("nuclei")[:128, :128], name="img")
    widget = SemanticSegmentationWidget(viewer)
    _, labels, boxes = widget.run(blocking=True)
    assert len(boxes.data)  # boxes that a re-run rewrites
    calls = []
    link_of(labels).segment = lambda *a: calls.append(a)
    _, labels_again, boxes_again = widget.run(blocking=True)
    assert labels_again is labels and boxes_again is boxes
    assert calls == [] and link_of(labels) is not None


def test_loading_a_checkpoint_of_the_other_task_explains(make_napari_viewer, tiny_unet_path):
    from napari_instseg._widgets.segment import InstanceSegmentationWidget

    viewer = make_napari_viewer()
    widget = InstanceSegmentationWidget(viewer)
    assert widget.load_checkpoint(tiny_unet_path) is None
    assert "Semantic segmentation widget" in widget.status.value


def test_multichannel_layer_with_a_chosen_channel_axis(make_napari_viewer, tiny_unet_path):
    viewer = make_napari_viewer()
    image, _ = disc_image((64, 64), [(20, 20)], 6)
    viewer.add_image(np.stack([image, image * 0.5, image * 0.2]), name="3ch", scale=(1, 0.5, 0.25))
    widget = _semantic_widget(viewer, tiny_unet_path)
    widget.channel_axis.value = "axis 0"
    classes, labels, boxes = widget.run(blocking=True)
    assert labels.data.shape == (64, 64)
    np.testing.assert_allclose(labels.scale, (0.5, 0.25))


def test_refreshing_or_hiding_a_result_does_not_count_as_an_edit(make_napari_viewer, make_widget):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(3, 64, 64), name="stack")
    widget = make_widget(viewer)
    first = widget.run(blocking=True)
    viewer.dims.set_point(0, 2)
    for layer in first:
        layer.visible = False
        layer.refresh()
        layer.visible = True
    again = widget.run(blocking=True)
    assert all(a is b for a, b in zip(first, again))
    assert not any(layer.name.endswith("[new]") for layer in viewer.layers)


def test_instance_widget_shows_the_models_own_thresholds(
    make_napari_viewer, tiny_maskrcnn_path, tmp_path
):
    from napari_instseg._widgets.segment import InstanceSegmentationWidget
    from napari_instseg.core.models import checkpoint
    from napari_instseg.core.models.registry import stored_postprocess

    state, metadata = checkpoint.load_checkpoint(tiny_maskrcnn_path)
    metadata.pop("format_version")
    metadata.update(
        name="tuned-maskrcnn", postprocess={"score_threshold": 0.35, "mask_threshold": 0.4}
    )
    tuned = checkpoint.save_checkpoint(tmp_path / "tuned.safetensors", state, metadata)
    widget = InstanceSegmentationWidget(make_napari_viewer())
    # on opening, the bundled model's own threshold (tuned on its training images)
    bundled = stored_postprocess("nuclei-maskrcnn")
    bundled = (bundled["score_threshold"], bundled["mask_threshold"])
    assert widget.model.value == "nuclei-maskrcnn" and bundled != (0.5, 0.5)
    shown = (widget.score_threshold.value, widget.mask_threshold.value)
    assert shown == pytest.approx(bundled)
    assert widget.load_checkpoint(tuned) == "tuned-maskrcnn"
    assert widget.score_threshold.value == pytest.approx(0.35)
    assert widget.mask_threshold.value == pytest.approx(0.4)
    assert widget._engine_kwargs() == pytest.approx(
        {"score_threshold": 0.35, "mask_threshold": 0.4}
    )
    assert widget.load_checkpoint(tiny_maskrcnn_path) == "tiny-maskrcnn"
    assert widget.score_threshold.value == pytest.approx(0.5)  # none stored: the usual 0.5
    assert widget.mask_threshold.value == pytest.approx(0.5)


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_widgets_take_a_diameter_and_test_time_augmentation(
    make_napari_viewer, tiny_unet_path, tiny_maskrcnn_path, tmp_path, task
):
    from napari_instseg._widgets.segment import (
        InstanceSegmentationWidget,
        SemanticSegmentationWidget,
    )
    from napari_instseg.core.models import checkpoint
    from napari_instseg.core.models.registry import register_checkpoint

    source = tiny_unet_path if task == "semantic" else tiny_maskrcnn_path
    state, metadata = checkpoint.load_checkpoint(source)
    metadata.pop("format_version")
    metadata.update(name=f"sized-{task}", object_diameter=12.0)
    sized = checkpoint.save_checkpoint(tmp_path / f"sized-{task}.safetensors", state, metadata)
    viewer = make_napari_viewer()
    image, _ = disc_image((64, 64), [(20, 20), (44, 40)], 6)
    viewer.add_image(image, name="cells")
    widget_class = SemanticSegmentationWidget if task == "semantic" else InstanceSegmentationWidget
    widget = widget_class(viewer)
    widget.model.reset_choices()
    widget.model.value = register_checkpoint(sized)
    widget.diameter.value = "big"
    assert widget.run(blocking=True) is None
    assert "object diameter 'big'" in widget.status.value
    widget.diameter.value = "24"
    widget.augment.value = True
    layers = widget.run(blocking=True)
    assert layers[-2].data.shape == image.shape
    assert layers[-2].metadata[TAG]["sizing"]["rescale"] == 0.5
    assert "diameter 24.0 px, rescaled 0.50x" in widget.status.value


def test_time_lapse_linked_into_tracks_in_a_real_window(make_napari_viewer):
    """A layer whose stack axis is labelled t defaults to linking across time:
    one id per nucleus through the frames, a features row per track and a
    Tracks layer on the image's geometry."""
    from napari.layers import Tracks

    from napari_instseg._sample_data import load_sample
    from napari_instseg._widgets.segment import SemanticSegmentationWidget

    viewer = make_napari_viewer()
    frame = load_sample("nuclei")[:160, :160]
    movie = np.stack([np.roll(frame, (k, 2 * k), axis=(0, 1)) for k in range(3)])
    viewer.add_image(movie, name="movie", axis_labels=("t", "y", "x"), scale=(5.0, 0.5, 0.5))
    widget = SemanticSegmentationWidget(viewer)
    assert widget.link.value == "time" and widget.link.enabled
    layers = widget.run(blocking=True)
    labels, tracks = layers[1], layers[-1]
    assert isinstance(tracks, Tracks)
    np.testing.assert_allclose(tracks.scale, (5.0, 0.5, 0.5))
    n_tracks = len(np.unique(tracks.data[:, 0]))
    assert n_tracks == len(labels.features) > 5
    assert "tracks" in widget.status.value
    # a nucleus away from the border keeps its id through the three frames
    centre = labels.features.sort_values("slices").iloc[-1]
    assert centre["slices"] == 3 and centre["first"] == 0
    widget.scope.value = "current slice"
    assert not widget.link.enabled  # one slice has nothing to link


def test_block_by_block_into_zarr_gives_a_labels_layer_on_disk(make_napari_viewer, tmp_path):
    import zarr

    from napari_instseg._sample_data import load_sample
    from napari_instseg._widgets.segment import SemanticSegmentationWidget
    from napari_instseg.core.blockwise.blocks import segment_blockwise

    viewer = make_napari_viewer()
    image = load_sample("nuclei")[:256, :320]
    lazy = zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, dtype=image.dtype)
    lazy[:] = image
    viewer.add_image(lazy, name="slide")
    widget = SemanticSegmentationWidget(viewer)
    widget.zarr_output.enabled.value = True
    assert not widget.zarr_output.path.native.isHidden()  # shown once chosen
    widget.zarr_output.path.value = tmp_path / "notzarr.tif"
    assert widget.run(blocking=True) is None and "ending in .zarr" in widget.status.value
    widget.zarr_output.path.value = tmp_path / "slide_labels.zarr"
    labels, boxes = widget.run(blocking=True)  # instances only: no class map block-wise
    assert not isinstance(labels.data, np.ndarray)  # the file, read lazily
    expected = segment_blockwise(image, "nuclei-unet")
    np.testing.assert_array_equal(np.asarray(labels.data), expected.labels)
    assert len(boxes.data) == len(expected) > 10
    on_disk = zarr.open_group(str(tmp_path / "slide_labels.zarr"), mode="r")
    assert on_disk.attrs["multiscales"][0]["datasets"][0]["path"] == "0"
    assert "slide_labels.zarr" in widget.status.value
    widget.run(blocking=True)  # the file exists now: refused, nothing overwritten
    assert "exists" in widget.status.value


def test_a_large_image_whose_labels_cannot_fit_is_refused_before_any_work(
    make_napari_viewer, monkeypatch
):
    import dask.array as da

    # 100 MB free: an 8192 x 8192 image's uint32 labels (268 MB) cannot be held
    monkeypatch.setattr("napari_instseg.core.blockwise.sizing.free_memory", lambda: 100 * 2**20)
    viewer = make_napari_viewer()
    slide = da.zeros((8192, 8192), dtype=np.uint16, chunks=2048)
    viewer.add_image(slide, name="slide", contrast_limits=(0, 1), multiscale=False)
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Semantic segmentation (U-Net)"
    )
    widget.image_layer.value = viewer.layers["slide"]
    layers = len(viewer.layers)
    assert widget.run(blocking=True) is None
    assert widget.status.value.startswith("Error: the labels of 67.1 Mpx need up to 268.4 MB")
    assert "Block by block into a zarr file" in widget.status.value
    assert len(viewer.layers) == layers


@pytest.mark.bundled
def test_boxes_a_rerun_adds_in_place_are_rectangles(make_napari_viewer):
    """napari gives shapes added by setting a layer's data the type of its
    shapes before, "polygon" for an empty layer: boxes then bent when dragged."""
    from napari_instseg._sample_data import load_sample
    from napari_instseg._widgets.segment import InstanceSegmentationWidget

    viewer = make_napari_viewer()
    field = load_sample("nuclei")[:160, :200]
    image = viewer.add_image(np.zeros_like(field), name="field")
    widget = InstanceSegmentationWidget(viewer)
    widget.model.value = "nuclei-maskrcnn"
    first = widget.run(blocking=True)
    assert len(first[-1].data) == 0  # nothing on a black field
    image.data = field
    again = widget.run(blocking=True)
    assert again[-1] is first[-1] and len(again[-1].data) > 3  # updated in place
    assert set(again[-1].shape_type) == {"rectangle"}

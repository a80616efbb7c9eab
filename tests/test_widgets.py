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


def test_blocking_run_adds_layers_with_source_geometry(make_napari_viewer, tiny_unet_path):
    viewer = make_napari_viewer()
    image, _ = disc_image((64, 80), [(20, 20), (40, 50)], 6)
    viewer.add_image(image, name="cells", scale=(0.5, 0.25), translate=(10, 20))
    widget = _semantic_widget(viewer, tiny_unet_path)
    layers = widget.run(blocking=True)
    names = [layer.name for layer in layers]
    assert names == [
        "cells classes (tiny-unet)",
        "cells instances (tiny-unet)",
        "cells boxes (tiny-unet)",
    ]
    for layer in layers:
        np.testing.assert_allclose(layer.scale[-2:], (0.5, 0.25))
        np.testing.assert_allclose(layer.translate[-2:], (10, 20))
        assert TAG in layer.metadata
    labels, boxes = layers[1], layers[2]
    assert len(boxes.data) == len(labels.features) == labels.data.max()


def test_rerun_keeps_user_edits(make_napari_viewer, tiny_unet_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(64, 64), name="img")
    widget = _semantic_widget(viewer, tiny_unet_path)
    first = widget.run(blocking=True)
    again = widget.run(blocking=True)
    assert [a is b for a, b in zip(first, again)] == [True, True, True]  # untouched: updated
    edited = first[1]
    data = edited.data.copy()
    data[:5, :5] = 99
    edited.data = data
    third = widget.run(blocking=True)
    assert third[1] is not edited and third[1].name.endswith("[new]")
    assert (edited.data[:5, :5] == 99).all(), "the user's edit survives"


def test_threaded_run_reports_progress_and_finishes(make_napari_viewer, qtbot, tiny_unet_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(200, 200), name="img")
    widget = _semantic_widget(viewer, tiny_unet_path)
    widget.tile_size.value = 64
    worker = widget.run(blocking=False)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    qtbot.waitUntil(lambda: "img instances (tiny-unet)" in viewer.layers, timeout=5000)
    assert widget.progress.value == widget.progress.max > 1
    assert widget.run_button.enabled


def test_cancel_leaves_no_layer(make_napari_viewer, qtbot, tiny_unet_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(1024, 1024), name="big")
    widget = _semantic_widget(viewer, tiny_unet_path)
    widget.tile_size.value = 64
    worker = widget.run(blocking=False)
    worker.yielded.connect(lambda step: step.done == 2 and widget.cancel())
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert "cancelled" in widget.status.value


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

"""The Image series widget in a real napari window (pytest-xvfb): segment a
folder, step through it, correct, save, reopen, retrain, re-segment."""

import numpy as np
import pytest
import tifffile

from napari_instseg._sample_data import load_sample

pytestmark = [pytest.mark.gui, pytest.mark.bundled]

CROPS = [(0, 0), (0, 300), (260, 150)]


@pytest.fixture
def folder(tmp_path):
    image = load_sample("nuclei")
    folder = tmp_path / "microscope"
    folder.mkdir()
    for k, (y, x) in enumerate(CROPS):
        tifffile.imwrite(folder / f"field{k}.tif", image[y : y + 200, x : x + 260])
    return folder


def _open(viewer, folder):
    _, widget = viewer.window.add_plugin_dock_widget("napari-instseg", "Image series")
    widget.model.value = "nuclei-unet"
    widget.device.value = "cpu"
    assert widget.open_folder(folder) is not None
    return widget


def _states(widget):
    table = widget.table.native
    return [table.item(row, 1).text() for row in range(table.rowCount())]


def test_segment_step_correct_reopen_and_keep_the_correction(make_napari_viewer, folder):
    viewer = make_napari_viewer()
    widget = _open(viewer, folder)
    assert widget.current == 0 and _states(widget) == ["not segmented"] * 3
    assert not widget.view.layers["labels"].data.any()  # an empty canvas to paint on
    widget.segment_all(blocking=True)
    assert _states(widget) == ["segmented"] * 3
    labels = widget.view.layers["labels"]
    assert labels.data.max() > 5  # the image on screen shows its result at once
    assert len(widget.view.layers["boxes"].data) == len(np.unique(labels.data)) - 1
    # boxes filling a layer that was empty are rectangles, whose corners move together
    assert set(widget.view.layers["boxes"].shape_type) == {"rectangle"}
    ids = np.unique(labels.data)[1:]
    erased = int(ids[len(ids) // 2])
    labels.data_setitem(np.nonzero(labels.data == erased), 0)  # the user erases one object
    widget.step(1)
    assert widget.current == 1 and _states(widget)[0] == "reviewed"
    widget.reviewed.value = True  # looked at and accepted as it is
    widget.step(1)
    widget.step(-1)
    widget.step(-1)
    assert widget.current == 0 and erased not in widget.view.layers["labels"].data
    saved = (folder / "labels" / "field0_labels.tif").read_bytes()

    again = _open(make_napari_viewer(), folder)  # napari closed and opened again
    assert _states(again) == ["reviewed", "reviewed", "segmented"]
    assert again.current == 2  # the first image not reviewed
    again.show(0)
    shown = again.view.layers["labels"].data
    assert erased not in shown and shown.max() > 5
    # re-segmenting the rest never touches the reviewed images
    again.segment_all(redo_segmented=True, blocking=True)
    assert (folder / "labels" / "field0_labels.tif").read_bytes() == saved
    assert _states(again) == ["reviewed", "reviewed", "segmented"]
    path = again.save_measurements()
    header = path.read_text().splitlines()[0].split(",")
    assert header[:2] == ["image", "label_id"] and "median_intensity" in header


def test_train_on_reviewed_images_then_resegment_the_rest(make_napari_viewer, folder, tmp_path):
    viewer = make_napari_viewer()
    widget = _open(viewer, folder)
    widget.segment_all(blocking=True)
    widget.reviewed.value = True
    widget.step(1)
    widget.reviewed.value = True
    widget.step(1)
    output = tmp_path / "m.safetensors"
    trained = widget.train(blocking=True, epochs=1, output=output)
    name = trained.name
    assert trained.images == 2 and widget.model.value == name and widget.resegment_button.enabled
    # trained at the model's object size, and the user is told
    assert "rescaled" in trained.notes[0] and trained.notes[0] in widget.status.value
    # never below the starting model on validation, and the status says which it kept
    assert trained.after >= trained.before
    kept = "its weights kept" in widget.status.value
    assert kept == trained.kept_base_weights and (kept or "→" in widget.status.value)
    assert widget.progress.value == widget.progress.max
    widget.segment_all(redo_segmented=True, blocking=True)
    assert widget.series.record(2).model == name
    assert _states(widget) == ["reviewed", "reviewed", "segmented"]


def test_bad_folders_are_one_line_messages(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-instseg", "Image series")
    (tmp_path / "empty").mkdir()
    assert widget.open_folder(tmp_path / "empty") is None
    assert widget.status.value.startswith("Error:") and "no images" in widget.status.value
    assert widget.open_folder("") is None and "choose a folder" in widget.status.value


def test_a_long_message_wraps_and_the_dock_scrolls(make_napari_viewer, qtbot):
    """magicgui sizes a Label to its hint, about 80 characters wide: a long
    status once widened the dock and narrowed the canvas; and a dock taller
    than the window grew the window past a laptop's screen."""
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    _, widget = viewer.window.add_plugin_dock_widget("napari-instseg", "Image series")
    qtbot.wait(100)
    width, height = widget.native.width(), window.height()
    widget.status.value = "Trained on 2 reviewed images: its weights kept. " * 8
    widget._plot.setVisible(True)
    qtbot.wait(100)
    label = widget.status.native
    assert widget.native.width() == width and window.height() == height
    assert label.height() >= label.heightForWidth(label.width()) > 4 * label.fontMetrics().height()

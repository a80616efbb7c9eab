"""Boxes and labels that edit together, and the curation tools, in a real
napari window (pytest-qt, Xvfb), with the bundled models."""

import numpy as np
import pytest

from napari_instseg._sample_data import load_sample
from napari_instseg._widgets.result_links import link_of

pytestmark = pytest.mark.gui


@pytest.fixture
def result(make_napari_viewer, qtbot):
    """A Mask R-CNN result on a crop of the nuclei sample, linked."""
    from napari_instseg._widgets.segment import InstanceSegmentationWidget

    viewer = make_napari_viewer()
    viewer.add_image(load_sample("nuclei")[:256, :320], name="nuclei")
    widget = InstanceSegmentationWidget(viewer)
    labels, boxes = widget.run(blocking=True)
    link = link_of(labels)
    assert link is not None and len(boxes.data) == len(labels.features) > 10

    def settle():
        qtbot.waitUntil(lambda: link.pending == 0, timeout=20000)

    return viewer, widget, labels, boxes, settle


def _ids(boxes):
    return boxes.features["label_id"].to_numpy().astype(int)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _row(boxes, label_id):
    """The row of a label's box: moved boxes go to the end of the layer."""
    return int(np.flatnonzero(_ids(boxes) == label_id)[0])


def _corners(boxes, row):
    vertices = np.asarray(boxes.data[row])
    return np.array([vertices.min(0), vertices.max(0)])


def test_deleted_boxes_remove_their_objects_and_redrawn_ones_bring_them_back(result):
    viewer, widget, labels, boxes, settle = result
    before = labels.data.copy()
    rows = [1, 4, 7, 10, 12]
    ids, corners = _ids(boxes)[rows], [_corners(boxes, r) for r in rows]
    n = len(boxes.data)
    boxes.selected_data = set(rows)
    boxes.remove_selected()
    assert len(boxes.data) == len(labels.features) == n - 5
    for label_id in ids:
        assert not (labels.data == label_id).any()
        assert label_id not in set(labels.features["label"])
    kept = set(_ids(boxes))
    boxes.add_rectangles(corners)
    settle()
    assert len(boxes.data) == len(labels.features) == n
    new_ids = [int(i) for i in _ids(boxes) if i not in kept]
    assert len(set(new_ids)) == 5 and not set(new_ids) & set(ids)
    ious = [max(_iou(before == a, labels.data == b) for b in new_ids) for a in ids]
    assert np.mean(ious) >= 0.8, ious
    row = labels.features[labels.features["label"] == new_ids[0]].iloc[0]
    assert row["class_name"] == "nucleus" and 0 < row["score"] <= 1
    assert row["area"] == (labels.data == new_ids[0]).sum() and row["mean_intensity"] > 0


def test_a_moved_box_segments_its_object_again(result):
    viewer, widget, labels, boxes, settle = result
    row = 3
    label_id = int(_ids(boxes)[row])
    before = labels.data == label_id
    data = list(boxes.data)
    data[row] = np.asarray(data[row]) + 3  # dragged 3 px down and right
    boxes.data = data
    settle()
    after = labels.data == label_id
    assert after.any() and 0.6 <= _iou(before, after) < 1.0
    ys, xs = np.nonzero(after)  # the box snapped to the new mask
    np.testing.assert_allclose(
        _corners(boxes, _row(boxes, label_id)),
        [[ys.min() - 0.5, xs.min() - 0.5], [ys.max() + 0.5, xs.max() + 0.5]],
    )
    assert len(boxes.data) == len(labels.features)


def test_painting_moves_boxes_and_undo_brings_them_back(result, qtbot):
    viewer, widget, labels, boxes, settle = result
    label_id = int(_ids(boxes)[0])
    top_before = _corners(boxes, 0)
    ys, xs = np.nonzero(labels.data == label_id)
    half = ys >= np.median(ys)
    labels.data_setitem((ys[half], xs[half]), 0)  # erase half, as the eraser does
    after = _corners(boxes, _row(boxes, label_id))
    assert after[1][0] < top_before[1][0]  # the box shrank to the rest
    assert labels.features.set_index("label").loc[label_id, "area"] == (~half).sum()
    undo = next(f for key, f in labels.keymap.items() if str(key) == "Ctrl+Z")
    undo(labels)  # Ctrl+Z on the Labels layer: napari's undo, then the boxes follow
    np.testing.assert_allclose(_corners(boxes, _row(boxes, label_id)), top_before)
    # a new id painted by hand gets a box; an object erased whole loses its
    new_id = int(labels.data.max()) + 1
    labels.data_setitem((np.arange(2, 8), np.arange(2, 8)), new_id)
    assert new_id in _ids(boxes) and new_id in set(labels.features["label"])
    gone = int(_ids(boxes)[2])
    ys, xs = np.nonzero(labels.data == gone)
    labels.data_setitem((ys, xs), 0)
    assert gone not in _ids(boxes) and gone not in set(labels.features["label"])
    assert len(boxes.data) == len(labels.features)


def test_a_box_on_empty_background_says_so(result):
    viewer, widget, labels, boxes, settle = result
    n = len(boxes.data)
    before = labels.data.copy()
    empty = np.ones((20, 20))
    free = np.argwhere(
        np.lib.stride_tricks.sliding_window_view(labels.data == 0, (20, 20)).all((-2, -1))
    )
    y, x = free[len(free) // 2]
    boxes.add_rectangles(np.array([[y, x], [y + empty.shape[0] - 1, x + empty.shape[1] - 1]]))
    settle()
    assert "No object found" in widget.status.value
    assert len(boxes.data) == len(labels.features) == n
    np.testing.assert_array_equal(labels.data, before)


def test_unet_box_uses_its_class_map(make_napari_viewer, qtbot):
    from napari_instseg._widgets.segment import SemanticSegmentationWidget

    viewer = make_napari_viewer()
    viewer.add_image(load_sample("nuclei")[:200, :200], name="nuclei")
    widget = SemanticSegmentationWidget(viewer)
    _, labels, boxes = widget.run(blocking=True)
    before = labels.data.copy()
    row, label_id = 2, int(_ids(boxes)[2])
    corners = _corners(boxes, row)
    boxes.selected_data = {row}
    boxes.remove_selected()
    boxes.add_rectangles(corners)
    link = link_of(labels)
    qtbot.waitUntil(lambda: link.pending == 0, timeout=20000)
    assert _iou(before == label_id, labels.data == _ids(boxes)[-1]) >= 0.8


def test_curation_tools_merge_split_remove_fill_relabel_and_undo(result):
    from napari_instseg._widgets.curation import SPLIT_POINTS, CurationWidget

    viewer, widget, labels, boxes, settle = result
    tools = CurationWidget(viewer)
    assert tools.labels_layer.value is labels
    n = len(boxes.data)
    a, b = (int(i) for i in _ids(boxes)[[0, 1]])
    boxes.selected_data = {0, 1}
    tools.merge_button.clicked.emit()
    assert "Merged" in tools.status.value
    assert not (labels.data == b).any() and len(boxes.data) == n - 1
    merged = labels.data == a
    tools.undo_button.clicked.emit()
    assert (labels.data == b).any() and len(boxes.data) == n
    # split an object between two points placed on it
    ys, xs = np.nonzero(labels.data == a)
    far = np.argmax(np.hypot(ys - ys.mean(), xs - xs.mean()))
    near = np.argmin(np.hypot(ys - (2 * ys.mean() - ys[far]), xs - (2 * xs.mean() - xs[far])))
    tools.points_button.clicked.emit()
    viewer.layers[SPLIT_POINTS].data = np.array([[ys[far], xs[far]], [ys[near], xs[near]]])
    tools.split_button.clicked.emit()
    assert "Split" in tools.status.value, tools.status.value
    assert len(boxes.data) == n + 1 and (labels.data == a).sum() < merged.sum()
    # remove small, fill holes, relabel
    tools.min_size.value = 100000
    tools.remove_button.clicked.emit()
    assert labels.data.max() == 0 and len(boxes.data) == 0 and len(labels.features) == 0
    tools.undo_button.clicked.emit()
    assert len(boxes.data) == n + 1
    ys, xs = np.nonzero(labels.data == a)
    hole = (int(np.median(ys)), int(np.median(xs)))
    labels.data_setitem((np.array([hole[0]]), np.array([hole[1]])), 0)
    tools.fill_button.clicked.emit()
    assert labels.data[hole] == a
    tools.relabel_button.clicked.emit()
    ids = np.unique(labels.data)[1:]
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert set(_ids(boxes)) == set(ids) == set(labels.features["label"])
    # unlinking stops the boxes following
    tools.follow.value = False
    labels.data_setitem((np.array([0]), np.array([0])), 999)
    assert 999 not in _ids(boxes)


def test_in_a_linked_z_stack_edits_stay_in_their_slice(make_napari_viewer, qtbot):
    from napari_instseg._widgets.segment import InstanceSegmentationWidget

    viewer = make_napari_viewer()
    frame = load_sample("nuclei")[:160, :160]
    viewer.add_image(np.stack([frame] * 3), name="z", axis_labels=("z", "y", "x"))
    widget = InstanceSegmentationWidget(viewer)
    labels, boxes = widget.run(blocking=True)
    link = link_of(labels)
    assert widget.link.value == "z" and len(boxes.data) == 3 * len(labels.features)
    row = 0
    (plane,), label_id = link._row_key(row)
    vertices = np.asarray(boxes.data[row]).copy()
    boxes.selected_data = {row}
    boxes.remove_selected()
    assert not (labels.data[plane] == label_id).any()
    volume = (labels.data == label_id).sum()
    assert volume > 0  # the 3D object lives on in the other slices
    assert labels.features.set_index("label").loc[label_id, "volume"] == volume
    boxes.add_rectangles(vertices[None])
    qtbot.waitUntil(lambda: link.pending == 0, timeout=20000)
    new_id = int(boxes.features["label_id"].iloc[-1])
    slices = np.flatnonzero((labels.data == new_id).any(axis=(1, 2)))
    assert list(slices) == [plane]


def test_widgets_from_the_plugin_menu_share_the_link(make_napari_viewer):
    """napari gives plugin widgets a proxy of the viewer, so the same layer
    reaches the two widgets as different proxy objects: they must still agree."""
    viewer = make_napari_viewer()
    viewer.add_image(load_sample("nuclei")[:200, :200], name="nuclei")
    _, segment = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Instance segmentation (Mask R-CNN)"
    )
    _, tools = viewer.window.add_plugin_dock_widget("napari-instseg", "Curate labels")
    labels, boxes = segment.run(blocking=True)
    tools.labels_layer.reset_choices()
    tools.labels_layer.value = viewer.layers[labels.name]
    n = len(boxes.data)
    boxes.selected_data = {0, 1}
    tools.merge_button.clicked.emit()
    assert "Merged" in tools.status.value, tools.status.value
    assert len(boxes.data) == n - 1


def test_moved_boxes_keep_their_features_colours_and_selection():
    """``move_boxes`` goes through napari's public calls (a plugin's private
    attribute access is a FutureWarning in napari 0.9, gone in 0.10): the
    moved boxes come back at the end with their own features and colours."""
    import warnings

    from napari.layers import Shapes

    from napari_instseg._widgets.box_tables import move_boxes

    def rectangle(y, x, size=8.0):
        return np.array([[y, x], [y, x + size], [y + size, x + size], [y + size, x]])

    boxes = Shapes(
        [rectangle(10.0 * k, 5.0) for k in range(4)],
        shape_type="rectangle",
        edge_color=["#ff0000", "#00ff00", "#0000ff", "#ffff00"],
        face_color="transparent",
        features={"label_id": np.arange(1, 5), "score": np.linspace(0.5, 0.9, 4)},
    )
    boxes.selected_data = {0, 3}
    moved = {1: rectangle(40.0, 40.0, 4.0), 3: rectangle(0.0, 0.0, 2.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        move_boxes(boxes, moved)
    by_id = {int(i): row for row, i in enumerate(boxes.features["label_id"])}
    assert sorted(by_id) == [1, 2, 3, 4] and len(boxes.data) == 4
    np.testing.assert_array_equal(boxes.data[by_id[2]], moved[1])
    np.testing.assert_array_equal(boxes.data[by_id[4]], moved[3])
    np.testing.assert_array_equal(boxes.data[by_id[1]], rectangle(0.0, 5.0))
    np.testing.assert_allclose(boxes.features["score"][by_id[4]], 0.9)
    np.testing.assert_allclose(boxes.edge_color[by_id[2]], [0, 1, 0, 1])  # green
    np.testing.assert_allclose(boxes.edge_color[by_id[4]], [1, 1, 0, 1])  # yellow
    assert set(boxes.selected_data) == {by_id[1], by_id[4]}

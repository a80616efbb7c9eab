"""Boxes and labels that edit together, on the nuclei sample in a real window.

    xvfb-run -a python benchmarks/box_editing.py [--threads 2] [--boxes 5]

For each bundled model, through the segmentation widget's linked result
layers (issue 19's targets):

- five boxes deleted: are their five objects gone from the labels and the
  features?
- the same five boxes drawn again: mean IoU of the new objects with the
  originals (>= 0.8), and seconds per box from drawing to painted (< 0.5 s
  for the Mask R-CNN on this CPU);
- the main thread's time in the link's own handlers per box (the box drawn,
  then the object painted), and the longest main-thread stall meanwhile (a
  5 ms QTimer's largest gap; target < 50 ms), beside the stall of napari
  alone adding the same rectangles to a Shapes layer that is not linked (its
  own work and a redraw; on this machine's software OpenGL, the floor);
- half of an object erased: does its box shrink to the rest?
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["nuclei-maskrcnn", "nuclei-unet"])
    args = parser.parse_args()

    import napari  # noqa: F401  (before the QApplication: napari sets it up)
    import torch
    from _common import git_commit, machine_description
    from qtpy.QtWidgets import QApplication

    from napari_instseg._widgets.linked_layers import LinkedResultLayers

    handler_seconds: list[float] = []

    def timed(method):
        def run(*a, **k):
            begin = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                handler_seconds.append(time.perf_counter() - begin)

        return run

    # before any link connects them, so the connected handlers are the timed ones
    for name in ("_on_boxes_changed", "_apply_segments", "_on_paint", "_on_labels_written"):
        setattr(LinkedResultLayers, name, timed(getattr(LinkedResultLayers, name)))
    torch.set_num_threads(args.threads)
    print(f"# box editing benchmark, commit {git_commit()}")
    print(f"# {machine_description()}")
    print(
        "model | deleted gone | redrawn mean IoU (min) | s per box | our main-thread ms per box "
        "| longest stall ms (napari alone) | erase half"
    )
    app = QApplication.instance() or QApplication([])
    for name in args.models:
        print(measure(name, args.boxes, app, handler_seconds), flush=True)
    return 0


def measure(name: str, n_boxes: int, app, handler_seconds: list) -> str:
    """One model's row of the table."""
    import napari
    from qtpy.QtCore import QTimer

    from napari_instseg._sample_data import load_sample
    from napari_instseg._widgets.result_links import link_of
    from napari_instseg._widgets.segment import (
        InstanceSegmentationWidget,
        SemanticSegmentationWidget,
    )

    viewer = napari.Viewer()
    viewer.add_image(load_sample("nuclei"), name="nuclei")
    widget_class = InstanceSegmentationWidget if "maskrcnn" in name else SemanticSegmentationWidget
    widget = widget_class(viewer)
    widget.model.value = name
    *_, labels, boxes = widget.run(blocking=True)
    link = link_of(labels)
    original = labels.data.copy()
    ids = boxes.features["label_id"].to_numpy().astype(int)
    rows = np.linspace(0, len(ids) - 1, n_boxes).round().astype(int)
    corners = [
        np.array([np.asarray(boxes.data[r]).min(0), np.asarray(boxes.data[r]).max(0)]) for r in rows
    ]
    boxes.selected_data = set(rows.tolist())
    boxes.remove_selected()
    gone = all(
        not (labels.data == i).any() and i not in set(labels.features["label"]) for i in ids[rows]
    )
    # warm-up: the first box loads the model
    boxes.add_rectangles(corners[:1])
    while link.pending:
        app.processEvents()
    warm_id = int(boxes.features["label_id"].iloc[-1])
    boxes.selected_data = {len(boxes.data) - 1}
    boxes.remove_selected()
    assert not (labels.data == warm_id).any()

    def heartbeat(work):
        """The longest gap between 5 ms ticks of the main thread during ``work``."""
        ticks = []
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start(5)
        start = time.perf_counter()
        work()
        timer.stop()
        return max(np.diff([start, *ticks, time.perf_counter()])) * 1000

    seconds, ours = [], []

    def draw_boxes():
        for corner in corners:  # one box at a time, as a user draws them
            begin = time.perf_counter()
            handler_seconds.clear()
            boxes.add_rectangles(corner[None])
            while link.pending:
                app.processEvents()
                time.sleep(0.001)
            seconds.append(time.perf_counter() - begin)
            ours.append(sum(handler_seconds) * 1000)

    stall = heartbeat(draw_boxes)
    plain = viewer.add_shapes(
        [np.asarray(v) for v in boxes.data], shape_type="rectangle", name="plain"
    )

    def napari_alone():
        for corner in corners:
            plain.add_rectangles(corner[None])
            end = time.perf_counter() + 0.2
            while time.perf_counter() < end:
                app.processEvents()
                time.sleep(0.001)

    floor = heartbeat(napari_alone)
    viewer.layers.remove(plain)
    new_ids = boxes.features["label_id"].to_numpy().astype(int)[-len(rows) :]
    ious = []
    for old, new in zip(ids[rows], new_ids):
        a, b = original == old, labels.data == new
        ious.append((a & b).sum() / max((a | b).sum(), 1))

    label_id = int(boxes.features["label_id"].iloc[0])
    height_before = np.ptp(np.asarray(boxes.data[0])[:, 0])
    ys, xs = np.nonzero(labels.data == label_id)
    half = ys >= np.median(ys)
    labels.data_setitem((ys[half], xs[half]), 0)
    height_after = np.ptp(np.asarray(boxes.data[0])[:, 0])
    rest = np.ptp(ys[~half]) + 1
    viewer.close()
    return (
        f"{name} | {'yes' if gone else 'NO'} | {np.mean(ious):.3f} ({min(ious):.3f}) | "
        f"{np.mean(seconds):.3f} | {np.mean(ours):.0f} (max {max(ours):.0f}) | "
        f"{stall:.0f} ({floor:.0f}) | box {height_before:.0f} -> "
        f"{height_after:.0f} px high (rest {rest} px)"
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""Longest main-thread stall while the instance widget segments the nuclei sample.

    xvfb-run -a python benchmarks/ui_responsiveness.py [--model nuclei-maskrcnn]

A 5 ms QTimer on napari's main thread records when it gets to run; the
largest gap between two ticks is the longest time the UI could not respond
(panning, zooming, clicks). Reported separately for the time the worker
computes and for the moment the result layers are added. Without bundled
Mask R-CNN weights, a random-weight Mask R-CNN of the bundled architecture is
used: it returns the maximum number of detections, a worst case for adding layers.

``--napari-alone`` measures the floor instead: the same result layers added by
a plain script (``viewer.add_labels`` and ``viewer.add_shapes``, one event-loop
turn apart, as the widget does), first and second time in a fresh session.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def random_maskrcnn_checkpoint(folder: Path) -> Path:
    from train_bundled import model_info

    from napari_instseg.core.models import checkpoint
    from napari_instseg.core.models.loaded import build_model

    info = model_info("maskrcnn")
    info.name = "random-maskrcnn"
    path = folder / "random-maskrcnn.safetensors"
    checkpoint.save_checkpoint(path, build_model(info).state_dict(), info.to_metadata())
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--napari-alone",
        action="store_true",
        help="time napari adding the same layers from a script, without the widget",
    )
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_instseg._widgets._common import torch_loaded_in_background
    from napari_instseg.core.models.bundled import bundled_weights_path

    viewer = napari.Viewer()
    viewer.open_sample("napari-instseg", "nuclei")
    app = QApplication.instance()
    for _ in range(50):  # let the viewer settle
        app.processEvents()
        time.sleep(0.002)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    start = time.perf_counter()
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Instance segmentation (Mask R-CNN)"
    )
    opened = time.perf_counter()
    while not torch_loaded_in_background():
        # torch loads in the background once the widget is up
        app.processEvents()
        time.sleep(0.001)
    loaded = time.perf_counter()
    import torch  # loaded by now
    from _common import machine_description

    torch.set_num_threads(args.threads)
    model = args.model
    if model is None and bundled_weights_path("nuclei-maskrcnn").exists():
        model = "nuclei-maskrcnn"
    if model is None:  # registered for this process only, not remembered
        from napari_instseg.core.models.registry import register_checkpoint

        model = register_checkpoint(random_maskrcnn_checkpoint(Path(tempfile.mkdtemp())))
    widget.model.reset_choices()
    widget.model.value = model
    widget.score_threshold.value = 0.0 if model == "random-maskrcnn" else 0.5

    adding: list[float] = []
    put_layers = widget._put_layers

    def timed_put_layers(*args, **kwargs):
        adding.append(time.perf_counter())
        return put_layers(*args, **kwargs)

    widget._put_layers = timed_put_layers

    def longest_gap(t0, t1):
        """(length, start relative to t0) of the longest gap between ticks."""
        inside = [t0, *[t for t in ticks if t0 <= t <= t1], t1]
        return max((b - a, a - t0) for a, b in zip(inside, inside[1:]))

    print(f"machine: {machine_description()}")
    print(
        f"opening the widget: {1000 * longest_gap(start, opened)[0]:.0f} ms stall; then torch "
        f"loads in the background for {loaded - opened:.1f} s, longest stall "
        f"{1000 * longest_gap(opened, loaded)[0]:.0f} ms"
    )
    if args.napari_alone:
        return napari_alone(viewer, widget, model, ticks, timer, longest_gap)
    for run in ("first run (imports, model load)", "second run"):
        adding.clear()
        start = time.perf_counter()
        worker = widget.run(blocking=False)
        done: list[float] = []
        worker.finished.connect(lambda done=done: done.append(time.perf_counter()))
        while not done:
            app.processEvents()
            time.sleep(0.001)
        for _ in range(50):  # let the canvas draw the new layers
            app.processEvents()
            time.sleep(0.002)
        end = time.perf_counter()
        added = adding[0] if adding else done[0]
        print(f"{run}: model {model}, nuclei sample 520x696, {widget.status.value}")
        print(f"  worker computing {added - start:.2f} s, total {end - start:.2f} s")
        for phase, (t0, t1) in {"computing": (start, added), "adding layers": (added, end)}.items():
            gap, at = longest_gap(t0, t1)
            print(f"  longest main-thread stall {phase}: {gap * 1000:.0f} ms, {at:.2f} s in")

    # napari's own floor: one plain add_labels of the same instances, as a
    # script would do it (layer controls, canvas visual and overlays, first draw)
    labels = next(layer for layer in viewer.layers if layer.name.endswith(f"instances ({model})"))
    start = time.perf_counter()
    viewer.add_labels(labels.data.copy(), features=labels.features, name="plain add_labels")
    for _ in range(50):
        app.processEvents()
        time.sleep(0.002)
    gap, _ = longest_gap(start, time.perf_counter())
    print(f"napari alone, viewer.add_labels of the same instances: {gap * 1000:.0f} ms stall")
    timer.stop()
    viewer.close()
    return 0


def napari_alone(viewer, widget, model, ticks, timer, longest_gap) -> int:
    """napari's own cost of adding the widget's result layers from a script."""
    from qtpy.QtWidgets import QApplication

    from napari_instseg import _layers
    from napari_instseg.core.engine.predict import segment_instances

    app = QApplication.instance()
    source = viewer.layers[0]
    result = segment_instances(source.data, model, score_threshold=widget.score_threshold.value)
    geometry = _layers.geometry_from(source)
    timer.start()
    for run in ("first time in the session", "second time"):
        labels = _layers.labels_layer(result, f"{run} instances", geometry, source.data, model)
        boxes = _layers.boxes_layer(result, f"{run} boxes", geometry, model, False)
        gaps = []
        for data, kwargs, kind in (labels, boxes):
            start = time.perf_counter()
            getattr(viewer, f"add_{kind}")(data, **kwargs)
            for _ in range(50):  # one layer per event-loop turn, then let it draw
                app.processEvents()
                time.sleep(0.002)
            gaps.append(longest_gap(start, time.perf_counter())[0])
        print(
            f"napari alone, {run}: {len(result.label_ids)} objects, longest stall "
            f"add_labels {gaps[0] * 1000:.0f} ms, add_shapes {gaps[1] * 1000:.0f} ms"
        )
    timer.stop()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

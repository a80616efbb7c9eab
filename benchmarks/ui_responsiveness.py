"""Longest main-thread stall while the instance widget segments the nuclei sample.

    xvfb-run -a python benchmarks/ui_responsiveness.py [--model nuclei-maskrcnn]

A 5 ms QTimer on napari's main thread records when it gets to run; the
largest gap between two ticks is the longest time the UI could not respond
(panning, zooming, clicks). Reported separately for the time the worker
computes and for the moment the result layers are added. Without bundled
Mask R-CNN weights, a random-weight Mask R-CNN of the bundled architecture is
used: it returns the maximum number of detections, a worst case for adding layers.
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
    from napari_instseg.core.models.registry import build_model

    info = model_info("maskrcnn")
    info.name = "random-maskrcnn"
    path = folder / "random-maskrcnn.safetensors"
    checkpoint.save_checkpoint(path, build_model(info).state_dict(), info.to_metadata())
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import napari
    from _common import machine_description
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_instseg.core.models.registry import bundled_weights_path

    viewer = napari.Viewer()
    viewer.open_sample("napari-instseg", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Instance segmentation (Mask R-CNN)"
    )
    model = args.model
    if model is None and bundled_weights_path("nuclei-maskrcnn").exists():
        model = "nuclei-maskrcnn"
    if model is None:  # registered for this process only, not remembered
        from napari_instseg.core.models.registry import register_checkpoint

        model = register_checkpoint(random_maskrcnn_checkpoint(Path(tempfile.mkdtemp())))
    widget.model.reset_choices()
    widget.model.value = model
    widget.score_threshold.value = 0.0 if model == "random-maskrcnn" else 0.5

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    app = QApplication.instance()
    timer.start()
    start = time.perf_counter()
    worker = widget.run(blocking=False)
    computed = {}
    worker.returned.connect(lambda _: computed.setdefault("t", time.perf_counter()))
    done = []
    worker.finished.connect(lambda: done.append(time.perf_counter()))
    while not done:
        app.processEvents()
        time.sleep(0.001)
    for _ in range(50):  # let the canvas draw the new layers
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    end = time.perf_counter()

    def longest_gap(t0, t1):
        inside = [t for t in ticks if t0 <= t <= t1]
        inside = [t0, *inside, t1]
        return max(b - a for a, b in zip(inside, inside[1:]))

    returned = computed.get("t", done[0])
    print(f"machine: {machine_description()}")
    print(f"model {model}, nuclei sample 520x696, {widget.status.value}")
    print(f"total {end - start:.2f} s; worker computing {returned - start:.2f} s")
    print(
        f"longest main-thread stall while computing: {longest_gap(start, returned) * 1000:.0f} ms"
    )
    print(f"longest main-thread stall adding layers:   {longest_gap(returned, end) * 1000:.0f} ms")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Screenshots of the real napari window for the README and docs/usage.md.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshots.py [--out docs/images]

Uses the bundled models (run after installing the weights).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def settle(app, n=20):
    import time

    for _ in range(n):
        app.processEvents()
        time.sleep(0.02)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_instseg._sample_data import load_sample
    from napari_instseg.demo import demo_model

    app = QApplication.instance() or QApplication(sys.argv)

    def new_viewer():
        viewer = napari.Viewer()
        viewer.window.resize(1500, 900)
        return viewer

    # 1. the demo: nuclei sample, both widgets, a segmentation
    viewer = new_viewer()
    viewer.open_sample("napari-instseg", "nuclei")
    _, instance = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Instance segmentation (Mask R-CNN)"
    )
    _, semantic = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Semantic segmentation (U-Net)"
    )
    widget_name, model = demo_model()
    widget = instance if model == "nuclei-maskrcnn" else semantic
    layers = widget.run(blocking=True)
    for layer in layers:
        if layer.name.startswith("nuclei classes"):
            layer.visible = False
    settle(app)
    viewer.screenshot(str(args.out / "demo.png"), canvas_only=False)
    viewer.close()

    # 2. histology with the U-Net's class map
    viewer = new_viewer()
    viewer.open_sample("napari-instseg", "nuclei-histology")
    _, semantic = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Semantic segmentation (U-Net)"
    )
    classes, instances, boxes = semantic.run(blocking=True)
    instances.visible = False
    classes.opacity = 0.5
    settle(app)
    viewer.screenshot(str(args.out / "semantic-histology.png"), canvas_only=False)
    viewer.close()

    # 3. evaluation against the sample's ground truth
    viewer = new_viewer()
    image, truth = load_sample("nuclei", with_labels=True)
    viewer.add_image(image, name="nuclei", colormap="gray", contrast_limits=(0, 80))
    _, semantic = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Semantic segmentation (U-Net)"
    )
    _, predicted, boxes = semantic.run(blocking=True)
    viewer.layers.remove(boxes)
    viewer.layers.remove(viewer.layers[f"nuclei classes ({semantic.model.value})"])
    viewer.add_labels(truth, name="ground truth", visible=False)
    _, evaluate = viewer.window.add_plugin_dock_widget("napari-instseg", "Evaluate segmentation")
    evaluate.ground_truth.value = viewer.layers["ground truth"]
    evaluate.prediction.value = predicted
    predicted.visible = False
    evaluate.evaluate()
    settle(app)
    viewer.screenshot(str(args.out / "evaluate.png"), canvas_only=False)
    viewer.close()

    # 4. fine-tuning on corrected labels (a short run on both samples)
    viewer = new_viewer()
    for key in ("nuclei", "nuclei-histology"):
        image, truth = load_sample(key, with_labels=True)
        viewer.add_image(image, name=key, rgb=image.ndim == 3, visible=key == "nuclei")
        viewer.add_labels(truth, name=f"{key} corrected", visible=key == "nuclei")
    _, train = viewer.window.add_plugin_dock_widget("napari-instseg", "Train model")
    for key in ("nuclei", "nuclei-histology"):
        train.add_pair(viewer.layers[key], viewer.layers[f"{key} corrected"])
    train.epochs.value = 0
    train.minutes.value = 0.5
    train.output.value = str(Path(tempfile.mkdtemp()) / "my-nuclei.safetensors")
    train.train(blocking=True)
    settle(app)
    viewer.screenshot(str(args.out / "train.png"), canvas_only=False)
    viewer.close()
    print(f"screenshots in {args.out}: demo with {widget_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Screenshots of the real napari window for the README and docs/usage.md.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshots.py [--out docs/images]
        [--only demo semantic evaluate train editing zarr series]

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
    parser.add_argument("--only", nargs="+", default=list(SHOTS), choices=list(SHOTS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv)

    def new_viewer():
        viewer = napari.Viewer()
        viewer.window.resize(1500, 900)
        return viewer

    widget_name = ""
    if "demo" in args.only:
        widget_name = demo(new_viewer, app, args.out)
    if "semantic" in args.only:
        semantic_histology(new_viewer, app, args.out)
    if "evaluate" in args.only:
        evaluation(new_viewer, app, args.out)
    if "train" in args.only:
        training(new_viewer, app, args.out)
    if "editing" in args.only:
        box_editing(new_viewer, app, args.out)
    if "zarr" in args.only:
        zarr_output(new_viewer, app, args.out)
    if "series" in args.only:
        image_series(new_viewer, app, args.out)
    print(f"screenshots in {args.out}: {', '.join(args.only)} {widget_name}")
    return 0


SHOTS = ("demo", "semantic", "evaluate", "train", "editing", "zarr", "series")


def demo(new_viewer, app, out):
    """The demo: nuclei sample, both widgets, a segmentation."""
    from napari_instseg.demo import demo_model

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
    viewer.reset_view()  # the docks took their width after the image was framed
    settle(app)
    viewer.screenshot(str(out / "demo.png"), canvas_only=False)
    viewer.close()
    return widget_name


def semantic_histology(new_viewer, app, out):
    """Histology with the U-Net's class map."""
    viewer = new_viewer()
    viewer.open_sample("napari-instseg", "nuclei-histology")
    _, semantic = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Semantic segmentation (U-Net)"
    )
    classes, instances, boxes = semantic.run(blocking=True)
    instances.visible = False
    classes.opacity = 0.5
    settle(app)
    viewer.screenshot(str(out / "semantic-histology.png"), canvas_only=False)
    viewer.close()


def evaluation(new_viewer, app, out):
    """Evaluation against the sample's ground truth."""
    from napari_instseg._sample_data import load_sample

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
    viewer.screenshot(str(out / "evaluate.png"), canvas_only=False)
    viewer.close()


def training(new_viewer, app, out):
    """Fine-tuning on corrected labels (a short run on both samples)."""
    from napari_instseg._sample_data import load_sample

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
    viewer.screenshot(str(out / "train.png"), canvas_only=False)
    viewer.close()


def box_editing(new_viewer, app, out):
    """Boxes and labels edited together, and the Curate labels widget."""
    import numpy as np

    from napari_instseg._widgets.result_links import link_of

    viewer = new_viewer()
    viewer.open_sample("napari-instseg", "nuclei")
    _, instance = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Instance segmentation (Mask R-CNN)"
    )
    _, tools = viewer.window.add_plugin_dock_widget("napari-instseg", "Curate labels")
    labels, boxes = instance.run(blocking=True)
    link = link_of(labels)
    # a missed nucleus: delete two boxes and draw one of them again by hand
    corners = np.array([np.asarray(boxes.data[12]).min(0), np.asarray(boxes.data[12]).max(0)])
    boxes.selected_data = {12, 13}
    boxes.remove_selected()
    boxes.add_rectangles(corners)
    while link.pending:
        settle(app, 1)
    boxes.selected_data = {len(boxes.data) - 1}
    boxes.mode = "select"
    centre = corners.mean(0)
    viewer.camera.center = tuple(centre)
    viewer.camera.zoom = 4
    tools.labels_layer.value = viewer.layers[labels.name]
    settle(app)
    viewer.screenshot(str(out / "box-editing.png"), canvas_only=False)
    # the Curate labels widget: merge two neighbours, then split them again at two points
    labels.show_selected_label = False
    rows = _closest_pair(boxes)
    boxes.selected_data = set(rows)
    tools.merge_selected()
    merged = int(boxes.features["label_id"].iloc[min(rows)])
    ys, xs = np.nonzero(labels.data == merged)
    far = np.argmax(np.hypot(ys - ys.mean(), xs - xs.mean()))
    near = np.argmin(np.hypot(ys - (2 * ys.mean() - ys[far]), xs - (2 * xs.mean() - xs[far])))
    tools.place_split_points()
    points = viewer.layers["split points"]
    points.data = np.array([[ys[far], xs[far]], [ys[near], xs[near]]])
    viewer.camera.center = (ys.mean(), xs.mean())
    viewer.camera.zoom = 5
    tools.split_button.clicked.emit()
    settle(app)
    viewer.screenshot(str(out / "curation-split.png"), canvas_only=False)
    viewer.close()


def zarr_output(new_viewer, app, out):
    """A lazily opened zarr mosaic segmented block by block into a zarr file."""
    import numpy as np
    import zarr

    from napari_instseg._sample_data import load_sample

    nuclei = load_sample("nuclei")
    tiles = [nuclei, nuclei[:, ::-1], nuclei[::-1], nuclei[::-1, ::-1]]
    mosaic = np.block([[tiles[(r + c) % 4] for c in range(4)] for r in range(4)])
    folder = Path(tempfile.mkdtemp())
    lazy = zarr.create_array(str(folder / "mosaic.zarr"), shape=mosaic.shape,
                             chunks=(512, 512), dtype=mosaic.dtype)  # fmt: skip
    lazy[:] = mosaic
    viewer = new_viewer()
    viewer.add_image(lazy, name="mosaic")
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Semantic segmentation (U-Net)"
    )
    widget.zarr_output.enabled.value = True
    widget.zarr_output.path.value = folder / "mosaic_labels.zarr"
    widget.run(blocking=True)
    viewer.layers["mosaic boxes (nuclei-unet)"].visible = False
    viewer.camera.zoom = viewer.camera.zoom * 1.6
    settle(app)
    viewer.screenshot(str(out / "zarr-output.png"), canvas_only=False)
    viewer.close()


def image_series(new_viewer, app, out):
    """A folder of six fields segmented, the first corrected and reviewed,
    the second on screen: the Image series widget's review loop."""
    import numpy as np
    import tifffile

    from napari_instseg._sample_data import load_sample

    image = load_sample("nuclei")
    folder = Path(tempfile.mkdtemp()) / "my-microscope"
    folder.mkdir()
    for k, (y, x) in enumerate([(0, 0), (0, 340), (260, 0), (260, 340), (130, 170), (60, 200)]):
        tifffile.imwrite(folder / f"field_{k + 1:02d}.tif", image[y : y + 260, x : x + 356])
    viewer = new_viewer()
    _, series = viewer.window.add_plugin_dock_widget("napari-instseg", "Image series")
    series.model.value = "nuclei-maskrcnn"
    series.open_folder(folder)
    series.segment_all(blocking=True)
    labels = series.view.layers["labels"]
    first = int(np.unique(labels.data)[1])
    labels.data_setitem(np.nonzero(labels.data == first), 0)  # a correction
    series.step(1)
    viewer.layers[-3].contrast_limits = (0, 80)
    settle(app)
    viewer.reset_view()
    settle(app)
    viewer.screenshot(str(out / "image-series.png"), canvas_only=False)
    # the second field accepted as it is, then a short training on the two reviewed
    series.reviewed.value = True
    series.step(1)
    series.minutes.value = 0.5
    series.train(blocking=True)
    settle(app)
    viewer.screenshot(str(out / "image-series-trained.png"), canvas_only=False)
    viewer.close()


def _closest_pair(boxes):
    """The rows of the two boxes whose centres are closest (touching nuclei)."""
    import numpy as np

    centres = np.array([np.asarray(v).mean(0) for v in boxes.data])
    d = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1))
    d[np.diag_indices(len(d))] = np.inf
    a, b = np.unravel_index(np.argmin(d), d.shape)
    return [int(a), int(b)]


if __name__ == "__main__":
    sys.exit(main())

"""``napari-instseg demo``: napari with the nuclei sample, both widgets docked
and a segmentation from a bundled model shown."""

from __future__ import annotations

from .core.models import checkpoint
from .core.models.architectures import ARCHITECTURES, INSTANCE
from .core.models.bundled import bundled_weights_path
from .core.models.registry import registered


def demo_model() -> tuple[str, str] | None:
    """(widget display name, model) for the demo: Mask R-CNN when its bundled
    weights are installed, else the U-Net."""
    for widget, model in (
        ("Instance segmentation (Mask R-CNN)", "nuclei-maskrcnn"),
        ("Semantic segmentation (U-Net)", "nuclei-unet"),
    ):
        if bundled_weights_path(model).exists():
            return widget, model
    return None


def run_demo(screenshot: str | None = None, model: str | None = None) -> int:
    import napari

    viewer = napari.Viewer(title="napari-instseg demo")
    viewer.window.resize(1500, 900)
    viewer.open_sample("napari-instseg", "nuclei")
    _, instance = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Instance segmentation (Mask R-CNN)"
    )
    _, semantic = viewer.window.add_plugin_dock_widget(
        "napari-instseg", "Semantic segmentation (U-Net)"
    )
    choice = demo_model()
    if model is not None:
        widget = instance if _task_of(model) == INSTANCE else semantic
        widget.model.value = model
        choice = ("", model)
    elif choice is not None:
        widget = instance if _task_of(choice[1]) == INSTANCE else semantic
    if choice is None:
        print("no bundled model weights are installed: showing the sample only")
    else:
        widget.run(blocking=True)
        print(f"segmented the nuclei sample with {choice[1]}: {widget.status.value}")
    from qtpy.QtWidgets import QApplication

    for _ in range(5):  # the docks take their width over a few turns of the event loop
        QApplication.processEvents()
    viewer.reset_view()  # fit the image into the canvas left beside the docks
    for layer in viewer.layers:
        if "classes" in layer.name:
            layer.visible = False  # instances and boxes are what the demo shows
    if screenshot:
        QApplication.processEvents()
        viewer.screenshot(screenshot, canvas_only=False)
        print(f"screenshot saved to {screenshot}")
        viewer.close()
        return 0
    napari.run()
    return 0


def _task_of(model: str) -> str | None:
    """The task of a registered model or a checkpoint file, read without torch."""
    entry = registered(model)
    if entry is not None:
        return entry.task
    architecture = checkpoint.read_metadata(model).get("architecture")
    return ARCHITECTURES[architecture].task if architecture in ARCHITECTURES else None

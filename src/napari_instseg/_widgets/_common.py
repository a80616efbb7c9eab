"""Small pieces shared by the dock widgets."""

from __future__ import annotations

import gc
import threading

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, Widget

_torch_import = threading.Lock()  # see import_torch
_freezing_workers = 0  # see freeze_long_lived_objects_while
_collection_queued = False  # a removal's collection waits for the next event-loop turn


class WrappingLabel(Label):
    """A Label whose long messages wrap at the dock's width."""

    def __init__(self, label: str = "", value: str = ""):
        from qtpy.QtWidgets import QSizePolicy

        super().__init__(label=label, value=value)
        self.native.setWordWrap(True)
        # magicgui fixes a Label's size to its hint, about 80 characters wide
        # for wrapping text: a long message widened the dock and narrowed the
        # canvas. Its width now comes from the dock; and as the dock's layout
        # never asks a label its height for a width, the label sets its own
        # minimum height whenever its text or its width changes.
        self.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        _call_on_resize(self.native, self._fit_height)
        self._fit_height()

    @property
    def value(self) -> str:
        return Label.value.fget(self)

    @value.setter
    def value(self, text: str) -> None:
        Label.value.fset(self, text)
        self._fit_height()

    def _fit_height(self) -> None:
        native = self.native
        native.setMinimumHeight(max(native.heightForWidth(native.width()), 0))


def _call_on_resize(widget, callback) -> None:
    """Call ``callback`` after each resize of ``widget`` (an event filter, its
    child: it lives as long as ``widget`` does)."""
    from qtpy.QtCore import QEvent, QObject

    class ResizeWatch(QObject):
        def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
            if event.type() == QEvent.Type.Resize:
                callback()
            return False

    widget.installEventFilter(ResizeWatch(widget))


def button_row(*buttons: Widget) -> Container:
    """Buttons side by side on one row: a shorter dock that fits small screens."""
    row = Container(widgets=buttons, layout="horizontal", labels=False)
    row.margins = (0, 0, 0, 0)
    return row


SCROLLING_DOCK_MIN_HEIGHT = 320  # px: two docks in napari's default 651 px window


def add_scrolling_controls(owner: Container, widgets: list[Widget], *below) -> None:
    """Add ``widgets`` (labelled rows), then the Qt widgets ``below``, to
    ``owner`` inside a scroll area, so a dock taller than a laptop's screen
    scrolls instead of growing the window past it. napari docks a magicgui
    widget's inner widget, never its scroll area, so ``owner`` holds the
    area itself. It scrolls up and down only and keeps as wide as the
    controls need (known once napari's style has sized them)."""
    from qtpy.QtWidgets import QStyle

    controls = Container(labels=True, scrollable=True)
    controls.extend(widgets)
    for native in below:
        controls.native.layout().addWidget(native)
    controls.native.layout().addStretch()  # rows at the top, as napari docks them
    scroll = controls.root_native_widget
    bar = scroll.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)

    def fit() -> None:
        needed = controls.native.minimumSizeHint()
        scroll.setMinimumWidth(needed.width() + bar + 2)
        # and tall enough for its first rows when a second dock shares the column
        scroll.setMinimumHeight(min(needed.height(), SCROLLING_DOCK_MIN_HEIGHT))

    _call_on_resize(controls.native, fit)
    owner.margins = (0, 0, 0, 0)
    owner.native.layout().addWidget(scroll)


def device_picker(detection: bool = False) -> ComboBox:
    """A device picker that offers auto and cpu at once, and the GPUs as soon
    as torch has loaded in the background (see ``load_torch_in_background``)."""
    from qtpy.QtCore import QTimer

    picker = ComboBox(label="Device", choices=["auto", "cpu"], value="auto")
    # Started once the widget is up: an import beside the widget's construction
    # slows that 0.4 s to 1.7 s (the two threads take turns with the GIL). The
    # import thread touches no Qt object and the main thread polls it, so
    # closing napari or the widget meanwhile is safe.
    timer = QTimer(picker.native)
    threads: list[threading.Thread] = []

    def offer_devices() -> None:
        if not threads:
            threads.append(load_torch_in_background(detection))
            timer.start(100)
        if threads[0].is_alive():
            return
        timer.stop()
        if _torch_devices:
            picker.choices = _torch_devices

    timer.timeout.connect(offer_devices)
    timer.start(300)
    return picker


def load_torch_in_background(detection: bool = False) -> threading.Thread:
    """Run ``import_torch`` in a thread, so that opening a widget does not freeze
    napari for the 1-2 s torch takes to import. Not a daemon: napari closing
    meanwhile waits for the import instead of stopping the thread inside
    torch's initialisation."""

    def work() -> None:
        _torch_devices[:] = import_torch(detection)

    thread = threading.Thread(target=work, name="napari-instseg: import torch")
    thread.start()
    return thread


_torch_devices: list[str] = []  # the devices torch can use, once it has loaded


def torch_loaded_in_background() -> bool:
    """Whether a background import has finished (benchmarks and tests wait on it)."""
    return bool(_torch_devices) and not _torch_import.locked()


def import_torch(detection: bool = False) -> list[str]:
    """Import torch, and torchvision's detection code when ``detection``, in the
    calling thread; returns the devices torch can use. One thread at a time:
    two threads importing the same packages at once can deadlock on their
    circular imports. Fast once the modules are loaded."""
    with _torch_import:
        # importing core first loads triton's library in isolation (core.torch_setup)
        from ..core.devices import available_devices

        devices = available_devices()
        if detection:
            import torchvision.models.detection  # noqa: F401
    return devices


class UserError(Exception):
    pass


def error_message(err: BaseException) -> str:
    from ..core.types import InputError, ModelError

    if isinstance(err, (InputError, ModelError)):
        return str(err)
    return f"{type(err).__name__}: {err}".splitlines()[0]


def sizing_controls() -> tuple[LineEdit, CheckBox]:
    """The object diameter field and the test-time augmentation switch."""
    diameter = LineEdit(label="Object diameter", value="")
    diameter.tooltip = (
        "Typical object diameter in pixels, or 'auto' to measure it per image: the "
        "image is rescaled so objects reach the model's trained size. Empty: as it is."
    )
    augment = CheckBox(text="Test-time augmentation (8x slower)", value=False)
    augment.tooltip = "Average the model over the 8 flips and rotations of the image"
    return diameter, augment


def parse_diameter(text: str) -> float | str | None:
    """The diameter field's value for the engine; empty means none."""
    from ..core.engine.options import parse_diameter as engine_diameter
    from ..core.types import InputError

    text = (text or "").strip().lower()
    if not text:
        return None
    try:
        return engine_diameter(text)
    except InputError as err:
        raise UserError(str(err)) from None


def data_to_segment(layer, channel_axis: int | None, point=None) -> tuple:
    """(array, stack offset) of an image layer: all of it, or with ``point``
    (the viewer's world position) the 2D slice shown there, as a stack of one."""
    data = layer.data if not layer.multiscale else layer.data[0]
    axes = stack_axes(data.ndim, channel_axis)
    if point is None or not axes:
        return data, ()
    position = layer.world_to_data(point)
    offset = tuple(int(np.clip(round(position[a]), 0, data.shape[a] - 1)) for a in axes)
    index = [slice(None)] * data.ndim
    for axis, at in zip(axes, offset):
        index[axis] = slice(at, at + 1)
    return data[tuple(index)], offset


# the "Link across" choices and the engine's link option for each
LINK_CHOICES = {"none": None, "z": "z", "time": "t"}
_AXIS_NAMES = {"z": ("z", "depth", "plane", "slice"), "time": ("t", "time", "frame")}


def link_picker() -> ComboBox:
    picker = ComboBox(label="Link across", choices=list(LINK_CHOICES), value="none")
    picker.tooltip = (
        "Join a stack's slices: one id per 3D object (z) or per track (time), "
        "with a Tracks layer for time"
    )
    return picker


def stack_axes(ndim: int, channel_axis: int | None) -> list[int]:
    """The axes of an ``ndim``-D image's data that are neither its last two
    (spatial) nor its channel axis (an RGB layer's colour axis included)."""
    n_stack = ndim - 2 - (channel_axis is not None)
    return [a for a in range(ndim) if a != channel_axis][: max(n_stack, 0)]


def layer_stack_axes(layer, channel_axis: int | None) -> list[int]:
    """``stack_axes`` of an image layer's data (RGB: its colour axis is data)."""
    return stack_axes(layer.ndim + bool(layer.rgb), channel_axis)


def default_link(layer, channel_axis: int | None) -> str:
    """ "z" or "time" when the image's one stack axis is labelled so, else "none"."""
    axes = layer_stack_axes(layer, channel_axis) if layer is not None else []
    if len(axes) != 1:
        return "none"
    label = str(layer.axis_labels[axes[0]]).lower()
    return next((choice for choice, names in _AXIS_NAMES.items() if label in names), "none")


def freeze_long_lived_objects_while(worker, viewer) -> None:
    """Keep the cycle collector off the objects that exist now until ``worker``
    has finished (``gc.freeze``, undone by ``gc.unfreeze`` after the last such
    worker). A full collection walks every tracked object with the GIL held:
    with napari and torch loaded that is 660,000 objects and 310 ms of a
    frozen window, and a background run's allocations set one off every
    20 s or so. napari's layers are freed by the cycle collector, not by
    reference counting: when the user removes one of ``viewer``'s layers
    meanwhile, everything is unfrozen, collected (the full collection napari
    runs on a removal anyway) and frozen again, so its memory comes back."""
    global _freezing_workers

    def collect() -> None:
        global _collection_queued
        _collection_queued = False
        if _freezing_workers:
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    def collect_removed(event=None) -> None:
        global _collection_queued
        from qtpy.QtCore import QTimer

        if not _collection_queued:  # one collection, however many workers heard it
            _collection_queued = True
            QTimer.singleShot(0, collect)  # once the removal's own references are gone

    def release() -> None:
        global _freezing_workers
        viewer.layers.events.removed.disconnect(collect_removed)
        _freezing_workers -= 1
        if _freezing_workers == 0:
            gc.unfreeze()

    if _freezing_workers == 0:
        gc.freeze()
    _freezing_workers += 1
    viewer.layers.events.removed.connect(collect_removed)
    worker.finished.connect(release)


def model_choices(*tasks: str) -> list[tuple[str, str]]:
    """The registry's models of ``tasks`` as (label, name) choices; those
    without weights say so."""
    from ..core.models import registry

    return [
        (name if available else f"{name} (weights not installed)", name)
        for task in tasks
        for name, available in registry.models_for_task(task)
    ]

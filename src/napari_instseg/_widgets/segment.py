"""The inference dock widgets.

They read the chosen layer, run the core engine's generator in a napari
``thread_worker`` (progress per tile, Cancel between tiles) and turn the
result into layers via ``_layers``. ``run(blocking=True)`` runs in the calling
thread and returns the layers, for scripts and tests.

Re-run policy (never destroy work): a result layer made by this widget is
updated in place only while its data is untouched since we wrote it. If the
user edited it, renamed it or removed it, a new layer is added instead
("... [new]"), and the edited one is left as it is. Cancelling or an error
changes no layer.

Responsiveness: the worker also builds new Shapes layers (they triangulate
every rectangle when built), so adding them only inserts them. Results are
put one layer per turn of the event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
)

from .. import _layers
from ._common import device_picker, import_torch, wrapping_label

if TYPE_CHECKING:
    import napari

LOAD_CHECKPOINT = "Load checkpoint…"
AUTO_CHANNELS = "auto (RGB: last axis)"
WHOLE_STACK, CURRENT_SLICE = "whole stack", "current slice"
_DEFAULT_MODEL = {"instance": "nuclei-maskrcnn", "semantic": "nuclei-unet"}
_ARCHITECTURE = {"instance": "maskrcnn", "semantic": "unet"}


def _registry():
    from ..core.models import registry

    return registry


class _SegmentationWidget(Container):
    task = "instance"

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._worker = None
        self._activity = None  # napari progress shown while a worker runs
        self._written: dict[str, _WrittenLayer] = {}  # result layers this widget made
        # napari's layer features need pandas. Imported first by the worker, its
        # C extensions hold the interpreter's lock, freezing the UI for ~0.2 s.
        import pandas  # noqa: F401

        _registry().register_remembered_checkpoints()
        self.image_layer = ComboBox(label="Image", choices=self._image_layers)
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model.value = self._default_model()
        self.device = device_picker(detection=self.task == "instance")
        self.channel_axis = ComboBox(label="Channel axis", choices=self._channel_choices)
        self.scope = ComboBox(label="Stack", choices=[WHOLE_STACK, CURRENT_SLICE])
        self.tile_size = SpinBox(label="Tile size (0 = auto)", min=0, max=8192, step=64, value=0)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.status = wrapping_label()
        self.extend(
            [
                self.image_layer,
                self.model,
                self.device,
                *self._task_controls(),
                self.channel_axis,
                self.scope,
                self.tile_size,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        self._on_model_changed(self.model.value)  # the default model's stored settings
        self.run_button.changed.connect(lambda: self.run(blocking=False))
        self.cancel_button.changed.connect(self.cancel)
        self.model.changed.connect(self._on_model_changed)
        self.image_layer.changed.connect(self._on_image_changed)
        _registry().on_registry_change(self._on_registry_change)
        self.viewer.layers.events.inserted.connect(self.image_layer.reset_choices)
        self.viewer.layers.events.removed.connect(self.image_layer.reset_choices)
        self._on_image_changed()

    # --- controls ----------------------------------------------------------------------
    def _task_controls(self) -> list:
        return []

    def _engine_kwargs(self) -> dict:
        return {}

    def _default_model(self) -> str | None:
        """The bundled model when its weights are installed, else the first
        model of this task that can run."""
        models = _registry().models_for_task(self.task)
        ready = [name for name, available in models if available]
        preferred = _DEFAULT_MODEL[self.task]
        if preferred in ready:
            return preferred
        return ready[0] if ready else (models[0][0] if models else None)

    def _model_choices(self, _widget) -> list:
        """Models of this widget's task; those without weights say so."""
        choices = [
            (name if available else f"{name} (weights not installed)", name)
            for name, available in _registry().models_for_task(self.task)
        ]
        return [*choices, (LOAD_CHECKPOINT, LOAD_CHECKPOINT)]

    def _image_layers(self, _widget) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _channel_choices(self, _widget) -> list:
        picker = getattr(self, "image_layer", None)
        layer = picker.value if picker is not None else None
        if layer is None or layer.rgb:
            return [AUTO_CHANNELS]
        return [AUTO_CHANNELS, *(f"axis {a}" for a in range(layer.data.ndim - 2))]

    def _on_image_changed(self, *_):
        self.channel_axis.reset_choices()
        layer = self.image_layer.value
        spatial = 3 if layer is not None and layer.rgb else 2
        self.scope.enabled = layer is not None and layer.data.ndim > spatial

    def _on_registry_change(self):
        current = self.model.value
        self.model.reset_choices()
        if current in self.model.choices:
            self.model.value = current

    def _on_model_changed(self, value):
        if value != LOAD_CHECKPOINT:
            if value is not None:
                self._show_model_defaults(_registry().stored_postprocess(value))
            return
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self.native, "Load a napari-instseg checkpoint", "", "Checkpoints (*.safetensors)"
        )
        self.load_checkpoint(path) if path else self.model.reset_choices()

    def _show_model_defaults(self, postprocess: dict) -> None:
        """Set task controls to the settings stored with the chosen model."""

    def load_checkpoint(self, path) -> str | None:
        """Register a checkpoint file (remembered for later sessions) and select it."""
        from ..core.types import ModelError

        try:
            metadata = _registry().checkpoint.read_metadata(path)
            if _ARCHITECTURE[self.task] != metadata.get("architecture"):
                other = "Instance" if self.task == "semantic" else "Semantic"
                raise ModelError(
                    f"{Path(path).name} is a {metadata.get('architecture')} model; open it in "
                    f"the {other} segmentation widget"
                )
            name = _registry().remember_checkpoint(path)
        except ModelError as err:
            self._show_error(str(err))
            self.model.value = self._default_model()
            return None
        self.model.reset_choices()
        self.model.value = name
        return name

    def _selected_channel_axis(self, layer) -> int | None:
        if layer.rgb:
            return layer.data.ndim - 1
        value = self.channel_axis.value
        return None if value in (None, AUTO_CHANNELS) else int(value.split()[-1])

    # --- running -----------------------------------------------------------------------
    def _request(self):
        """(layer, data to segment, slice offset) for the current settings."""
        layer = self.image_layer.value
        if layer is None:
            raise _UserError("open an image layer first")
        if self.model.value in (None, LOAD_CHECKPOINT):
            raise _UserError("choose a model")
        data = layer.data if not layer.multiscale else layer.data[0]
        channel_axis = self._selected_channel_axis(layer)
        n_stack = data.ndim - 2 - (channel_axis is not None)
        offset: tuple[int, ...] = ()
        if self.scope.value == CURRENT_SLICE and n_stack > 0:
            point = layer.world_to_data(self.viewer.dims.point)
            stack_axes = [a for a in range(data.ndim) if a != channel_axis][:n_stack]
            offset = tuple(int(np.clip(round(point[a]), 0, data.shape[a] - 1)) for a in stack_axes)
            index = [slice(None)] * data.ndim
            for axis, position in zip(stack_axes, offset):
                index[axis] = slice(position, position + 1)
            data = data[tuple(index)]
        return layer, data, channel_axis, offset

    def _make_generator(self, data, channel_axis):
        from ..core import predict

        kwargs = {
            "model": self.model.value,
            "device": self.device.value,
            "tile_size": self.tile_size.value or None,
            "channel_axis": channel_axis,
            **self._engine_kwargs(),
        }
        if self.task == "instance":
            return predict.iter_segment_instances(data, **kwargs)
        return predict.iter_segment_semantic(data, **kwargs)

    def run(self, blocking: bool = False):
        """Segment the chosen image.

        ``blocking=True`` computes in the calling thread and returns the layers
        added or updated; otherwise starts (and returns) a thread worker.
        """
        self.status.value = ""
        try:
            layer, data, channel_axis, offset = self._request()
        except _UserError as err:
            self._show_error(str(err))
            return None
        names = self._result_names(layer)  # fixed now, whatever the pickers say later
        if blocking:
            import_torch(self.task == "instance")
            from ..core.predict import drain

            try:
                result = drain(self._make_generator(data, channel_axis), self._on_progress)
            except Exception as err:
                self._show_error(_message(err))
                raise
            tuples = self._layer_tuples(layer, result, offset, channel_axis, names)
            return self._put_layers(tuples, layer, incremental=False)
        from napari.qt.threading import create_worker

        def work():
            import_torch(self.task == "instance")
            result = yield from self._make_generator(data, channel_axis)
            # features, boxes, geometry and new layers are built here, off the main thread
            return _with_built_layers(
                self._layer_tuples(layer, result, offset, channel_axis, names)
            )

        worker = create_worker(work, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda tuples: self._put_layers(tuples, layer, incremental=True))
        worker.errored.connect(lambda err: self._show_error(_message(err)))
        worker.aborted.connect(lambda: self._set_status("Cancelled; no layer was changed."))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self._set_status("Running…")
        worker.start()
        return worker

    def cancel(self):
        """Stop the running worker at its next tile; no layer is changed."""
        if self._worker is not None:
            self._worker.quit()

    def _on_progress(self, step):
        self.progress.max = max(1, step.total)
        self.progress.value = step.done
        if self._worker is not None:  # also in napari's activity dock
            from napari.utils import progress

            if self._activity is None:
                self._activity = progress(total=step.total, desc=f"napari-instseg {self.task}")
            self._activity.n = step.done
            self._activity.refresh()

    def _on_finished(self):
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self._worker = None
        if self._activity is not None:
            self._activity.close()
            self._activity = None

    def _set_status(self, text: str):
        self.status.value = text

    def _show_error(self, text: str):
        self.status.value = f"Error: {text}"

    # --- results -----------------------------------------------------------------------
    def _result_names(self, source) -> dict:
        model = str(self.model.value)
        return {
            "model": model,
            "classes": f"{source.name} classes ({model})",
            "instances": f"{source.name} instances ({model})",
            "boxes": f"{source.name} boxes ({model})",
            "show_text": getattr(self, "show_scores", None) is not None and self.show_scores.value,
        }

    def _layer_tuples(self, source, result, offset, channel_axis, names) -> list:
        """Layer data tuples of a result (Qt-free, so the worker thread builds them)."""
        model = names["model"]
        geometry = _layers.geometry_from(source, stack_offset=offset, channel_axis=channel_axis)
        data = source.data if not source.multiscale else source.data[0]
        intensity = None
        if not offset and data.size <= 64e6 and (channel_axis is None or source.rgb):
            intensity = np.asarray(data)
        instances = result if self.task == "instance" else result.instances
        tuples = [
            _layers.labels_layer(instances, names["instances"], geometry, intensity, model),
            _layers.boxes_layer(instances, names["boxes"], geometry, model, names["show_text"]),
        ]
        if self.task == "semantic":
            tuples.insert(0, _layers.classes_layer(result, names["classes"], geometry, model))
        return tuples

    def _put_layers(self, tuples, source, incremental: bool) -> list:
        """Add or update the result layers. ``incremental`` adds one layer per
        turn of the event loop, so napari never stalls for all of them at once."""
        layers: list = []
        pending = list(tuples)

        def finish():
            link_boxes_and_labels(layers[-2], layers[-1])
            count = len(layers[-2].features)
            note = (
                "" if source in self.viewer.layers else " (the image layer was removed meanwhile)"
            )
            self._set_status(f"{count} objects found{note}.")

        def step():
            layers.append(self._put_layer(pending.pop(0)))
            if not pending:
                finish()
            elif incremental:
                from qtpy.QtCore import QTimer

                QTimer.singleShot(0, step)
            else:
                step()

        step()
        return layers

    def _put_layer(self, layer_tuple):
        data, kwargs, kind, *built = layer_tuple
        name = kwargs["name"]
        previous = self._written.get(name)
        if previous is not None and not previous.edited:
            layer = previous.layer
            if layer in self.viewer.layers and layer.name == previous.name:
                # untouched since we wrote it: update in place (keeps its
                # position in the layer list and the user's display settings)
                with previous.writing():
                    _update_layer(layer, data, kwargs)
                return layer
        if name in self.viewer.layers:  # edited by the user, or not ours: keep it
            kwargs = {**kwargs, "name": f"{name} [new]"}
        if built:  # made in the worker
            layer = built[0]
            layer.name = kwargs["name"]
            self.viewer.add_layer(layer)
        else:
            layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self._written[name] = _WrittenLayer(layer)
        return layer


def _with_built_layers(tuples) -> list:
    """Shapes layer tuples extended with the layer made from them (no Qt: safe
    in a worker). The tuple is kept for updating an existing layer. Labels
    layers are cheap to make on the main thread, and making the first one of a
    session in a worker held the interpreter's lock for 0.1-0.3 s (imports)."""
    from napari.layers import Shapes

    return [(*t, Shapes(t[0], **t[1])) if t[2] == "shapes" else t for t in tuples]


class _WrittenLayer:
    """A result layer and whether the user changed it since we wrote it.

    Watching napari's events (painting, filling, erasing, new data, renaming,
    moving shapes) costs nothing, unlike comparing large arrays.
    """

    def __init__(self, layer):
        self.layer = layer
        self.edited = False
        self._ours = False
        self.name = layer.name  # the name it was given (maybe "... [new]")
        # not "set_data": napari emits it on every refresh (moving a slider)
        for name in ("paint", "data", "name"):
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(self._on_change)

    def _on_change(self, event=None):
        if not self._ours:
            self.edited = True

    def writing(self):
        from contextlib import contextmanager

        @contextmanager
        def ours():
            self._ours = True
            try:
                yield
            finally:
                self._ours = False

        return ours()


def _update_layer(layer, data, kwargs) -> None:
    layer.data = data
    for key in ("scale", "translate", "rotate", "shear", "affine", "features", "metadata"):
        if key in kwargs:
            setattr(layer, key, kwargs[key])
    if len(data) and "edge_color" in kwargs:
        layer.edge_color = kwargs["edge_color"]
    if "text" in kwargs:
        layer.text = kwargs["text"]


def link_boxes_and_labels(labels, boxes) -> None:
    """Selecting a box highlights its instance; picking a label selects its box."""
    if "label_id" not in boxes.features:
        return
    busy = []

    def on_box_selection(*_):
        if busy:
            return
        selected = list(boxes.selected_data)
        busy.append(True)
        try:
            if len(selected) == 1:
                labels.selected_label = int(boxes.features["label_id"].iloc[selected[0]])
                labels.show_selected_label = True
            else:
                labels.show_selected_label = False
        finally:
            busy.clear()

    def on_label_selected(*_):
        if busy:
            return
        rows = np.flatnonzero(boxes.features["label_id"].to_numpy() == labels.selected_label)
        busy.append(True)
        try:
            boxes.selected_data = set(rows.tolist())
        finally:
            busy.clear()

    boxes.selected_data.events.items_changed.connect(on_box_selection)
    labels.events.selected_label.connect(on_label_selected)


class _UserError(Exception):
    pass


def _message(err: BaseException) -> str:
    from ..core.types import InputError, ModelError

    if isinstance(err, (InputError, ModelError)):
        return str(err)
    return f"{type(err).__name__}: {err}".splitlines()[0]


class InstanceSegmentationWidget(_SegmentationWidget):
    """Instance segmentation (Mask R-CNN): labels, boxes and scores."""

    task = "instance"

    def _task_controls(self):
        self.score_threshold = FloatSpinBox(
            label="Score threshold", min=0.0, max=1.0, step=0.05, value=0.5
        )
        # lower paints each object larger, higher smaller
        self.mask_threshold = FloatSpinBox(
            label="Mask threshold", min=0.05, max=0.95, step=0.05, value=0.5
        )
        self.mask_threshold.tooltip = (
            "Mask probability counted as inside an object: lower grows objects, higher shrinks them"
        )
        self.show_scores = CheckBox(text="Show class and score on boxes", value=False)
        return [self.score_threshold, self.mask_threshold, self.show_scores]

    def _show_model_defaults(self, postprocess):
        # the thresholds chosen for the model on its training images, else 0.5
        self.score_threshold.value = float(postprocess.get("score_threshold", 0.5))
        self.mask_threshold.value = float(postprocess.get("mask_threshold", 0.5))

    def _engine_kwargs(self):
        return {
            "score_threshold": self.score_threshold.value,
            "mask_threshold": self.mask_threshold.value,
        }


class SemanticSegmentationWidget(_SegmentationWidget):
    """Semantic segmentation (U-Net): class map plus derived instances."""

    task = "semantic"

    def _task_controls(self):
        # 0 keeps the size stored with the model (chosen when it was trained or tuned)
        self.min_size = SpinBox(
            label="Minimum object size (px, 0 = model's)", min=0, max=100000, value=0
        )
        return [self.min_size]

    def _engine_kwargs(self):
        return {"min_size": self.min_size.value or None}

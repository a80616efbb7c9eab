"""What both segmentation dock widgets share.

They read the chosen layer, run the core engine's generator in a napari
``thread_worker`` (progress per tile, Cancel between tiles) and turn the
result into layers via ``_layers``. ``run(blocking=True)`` runs in the calling
thread and returns the layers, for scripts and tests.

A re-run never destroys work (``result_layers``); cancelling or an error
changes no layer.

Responsiveness: the worker also builds new Shapes layers (they triangulate
every rectangle when built), so adding them only inserts them. Results are
put one layer per turn of the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    ProgressBar,
    PushButton,
    SpinBox,
)

from .. import _layers
from ..core.engine.diameter import describe

# the registry lists models and reads their settings without torch: the widget opens fast
from ..core.models import registry
from ..core.models.architectures import INSTANCE, SEMANTIC
from ._common import (
    LINK_CHOICES,
    UserError,
    WrappingLabel,
    add_scrolling_controls,
    button_row,
    data_to_segment,
    default_link,
    device_picker,
    error_message,
    freeze_long_lived_objects_while,
    import_torch,
    layer_stack_axes,
    link_picker,
    model_choices,
    parse_diameter,
    sizing_controls,
)
from .result_layers import ResultLayerWriter, link_boxes_and_labels, with_built_layers
from .result_links import link_result, unlink_layer
from .zarr_output import ZarrOutputControls, blockwise_generator, large_input_plan

if TYPE_CHECKING:
    import napari

LOAD_CHECKPOINT = "Load checkpoint or package…"
AUTO_CHANNELS = "auto (RGB: last axis)"
WHOLE_STACK, CURRENT_SLICE = "whole stack", "current slice"
_DEFAULT_MODEL = {INSTANCE: "nuclei-maskrcnn", SEMANTIC: "nuclei-unet"}


class SegmentationWidget(Container):
    task = INSTANCE

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self._worker = None
        self._activity = None  # napari progress shown while a worker runs
        self._writer = ResultLayerWriter(napari_viewer)
        self.packages: dict[str, str] = {}  # bioimage.io packages opened: path -> label
        # napari's layer features need pandas. Imported first by the worker, its
        # C extensions hold the interpreter's lock, freezing the UI for ~0.2 s.
        import pandas  # noqa: F401

        from ..core.models import user_settings

        user_settings.register_remembered_checkpoints()
        self.image_layer = ComboBox(label="Image", choices=self._image_layers)
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model.value = self._default_model()
        self.device = device_picker(detection=self.task == INSTANCE)
        self.channel_axis = ComboBox(label="Channel axis", choices=self._channel_choices)
        self.scope = ComboBox(label="Stack", choices=[WHOLE_STACK, CURRENT_SLICE])
        self.link = link_picker()
        self.diameter, self.augment = sizing_controls()
        self.tile_size = SpinBox(label="Tile size (0 = auto)", min=0, max=8192, step=64, value=0)
        self.zarr_output = ZarrOutputControls()
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.status = WrappingLabel()
        add_scrolling_controls(
            self,
            [
                self.image_layer, self.model, self.device, *self._task_controls(),
                self.diameter, self.augment, self.channel_axis, self.scope, self.link,
                self.tile_size, *self.zarr_output.widgets,
                button_row(self.run_button, self.cancel_button), self.progress, self.status,
            ],
        )  # fmt: skip
        self._on_model_changed(self.model.value)  # the default model's stored settings
        self.run_button.changed.connect(lambda: self.run(blocking=False))
        self.cancel_button.changed.connect(self.cancel)
        self.model.changed.connect(self._on_model_changed)
        self.image_layer.changed.connect(self._on_image_changed)
        self.channel_axis.changed.connect(lambda *_: self._on_stack_changed(new_axes=True))
        self.scope.changed.connect(lambda *_: self._on_stack_changed())
        registry.on_registry_change(self._on_registry_change)
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
        models = registry.models_for_task(self.task)
        ready = [name for name, available in models if available]
        preferred = _DEFAULT_MODEL[self.task]
        if preferred in ready:
            return preferred
        return ready[0] if ready else (models[0][0] if models else None)

    def _model_choices(self, _widget) -> list:
        """Models of this widget's task; those without weights say so."""
        choices = model_choices(self.task)
        packages = [(label, path) for path, label in self.packages.items()]
        return [*choices, *packages, (LOAD_CHECKPOINT, LOAD_CHECKPOINT)]

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
        self._on_stack_changed(new_axes=True)

    def _on_stack_changed(self, new_axes: bool = False):
        """Linking needs the whole stack and one stack axis; its default
        follows the axis label (z, t)."""
        layer = self.image_layer.value
        if layer is None:
            self.link.enabled = False
            return
        channel_axis = self._selected_channel_axis(layer)
        one_axis = len(layer_stack_axes(layer, channel_axis)) == 1
        self.link.enabled = one_axis and self.scope.value == WHOLE_STACK
        if new_axes:
            self.link.value = default_link(layer, channel_axis)

    def _on_registry_change(self):
        current = self.model.value
        self.model.reset_choices()
        if current in self.model.choices:
            self.model.value = current

    def _on_model_changed(self, value):
        if value != LOAD_CHECKPOINT:
            if value is not None:
                self._show_model_defaults(registry.stored_postprocess(value))
            return
        from .packages import choose_model_file

        choose_model_file(self)

    def _show_model_defaults(self, postprocess: dict) -> None:
        """Set task controls to the settings stored with the chosen model."""

    def load_checkpoint(self, path) -> str | None:
        """Register a checkpoint file (remembered for later sessions) and select it."""
        from .packages import open_checkpoint

        return open_checkpoint(self, path)

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
            raise UserError("open an image layer first")
        if self.model.value in (None, LOAD_CHECKPOINT):
            raise UserError("choose a model")
        channel_axis = self._selected_channel_axis(layer)
        whole = self.scope.value != CURRENT_SLICE
        data, offset = data_to_segment(
            layer, channel_axis, None if whole else self.viewer.dims.point
        )
        return layer, data, channel_axis, offset

    def _options(self) -> dict:
        """The engine's options from the controls (a UserError if one is wrong)."""
        return {
            "model": self.model.value,
            "device": self.device.value,
            "tile_size": self.tile_size.value or None,
            "diameter": parse_diameter(self.diameter.value),
            "augment": self.augment.value,
            "link": LINK_CHOICES[self.link.value] if self.link.enabled else None,
            **self._engine_kwargs(),
        }

    def _make_generator(self, data, channel_axis, kwargs, zarr_target=None):
        from ..core.engine import predict

        if zarr_target is not None:
            return blockwise_generator(data, kwargs, zarr_target)
        kwargs = {**kwargs, "channel_axis": channel_axis}
        if self.task == INSTANCE:
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
            kwargs = self._options()
            target = self.zarr_output.target(layer, channel_axis, kwargs)
            plan = large_input_plan(data, channel_axis, target, self.task, self.device.value)
        except UserError as err:
            self._show_error(str(err))
            return None
        names = self._result_names(layer)  # fixed now, whatever the pickers say later
        if blocking:
            import_torch(self.task == INSTANCE)
            from ..core.draining import drain

            try:
                generator = self._make_generator(data, channel_axis, kwargs, target)
                result = drain(generator, self._on_progress)
            except Exception as err:
                self._show_error(error_message(err))
                raise
            tuples = self._layer_tuples(layer, result, offset, channel_axis, names)
            return self._put_layers(
                tuples, layer, (channel_axis, offset, kwargs), incremental=False
            )
        from napari.qt.threading import create_worker

        def work():
            import_torch(self.task == INSTANCE)
            result = yield from self._make_generator(data, channel_axis, kwargs, target)
            # features, boxes, geometry and new layers are built here, off the main thread
            return with_built_layers(self._layer_tuples(layer, result, offset, channel_axis, names))

        worker = create_worker(work, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        run = (channel_axis, offset, kwargs)
        worker.returned.connect(
            lambda tuples: self._put_layers(tuples, layer, run, incremental=True)
        )
        worker.errored.connect(lambda err: self._show_error(error_message(err)))
        worker.aborted.connect(lambda: self._set_status("Cancelled; no layer was changed."))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self._set_status(f"Running… {plan}" if plan else "Running…")
        freeze_long_lived_objects_while(worker, self.viewer)
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
        # a block-wise run gives instances only, even with a U-Net
        task = SEMANTIC if hasattr(result, "classes") else INSTANCE
        return _layers.result_layers(task, source, result, offset, channel_axis, names)

    def _put_layers(self, tuples, source, run: tuple, incremental: bool) -> list:
        """Add or update the result layers. ``incremental`` adds one layer per
        turn of the event loop, so napari never stalls for all of them at once.
        ``run`` is (channel axis, stack offset, options) of the run, with which
        boxes drawn later are segmented (``linked_layers``)."""
        layers: list = []
        pending = list(tuples)

        def finish():
            labels, boxes = _layers.instances_and_boxes(layers)
            link_boxes_and_labels(labels, boxes)
            in_memory = isinstance(labels.data, np.ndarray)
            # boxes and labels edit together; not for labels on disk, where
            # following every edit would rescan the whole file
            if labels.data.ndim == boxes.ndim and in_memory:
                link_result(self.viewer, labels, boxes, source, *run, self._set_status)
            note = (
                "" if source in self.viewer.layers else " (the image layer was removed meanwhile)"
            )
            made = labels.metadata.get(_layers.TAG, {}).get("sizing", {})  # the result's metadata
            if made.get("labels_file"):
                note += f", labels written to {made['labels_file']}"
            sizing = describe(made)
            found = _layers.describe_count(labels)
            self._set_status(f"{found} found{f' ({sizing})' if sizing else ''}{note}.")

        def step():
            name = pending[0][1]["name"]
            if name in self.viewer.layers:  # about to be updated: not an edit to follow
                unlink_layer(self.viewer.layers[name])
            layers.append(self._writer.put(pending.pop(0)))
            if not pending:
                finish()
            elif incremental:
                from qtpy.QtCore import QTimer

                QTimer.singleShot(0, step)
            else:
                step()

        step()
        return layers

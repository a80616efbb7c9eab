"""The inference dock widgets.

They only read the chosen layer, run the core engine's generator in a napari
``thread_worker`` (progress per tile, Cancel between tiles) and turn the
result into layers via ``_layers``. ``run(blocking=True)`` runs in the calling
thread and returns the layers, for scripts and tests.

Re-run policy (never destroy work): a result layer made by this widget is
updated in place only while its data is untouched since we wrote it; if the
user edited it (or removed it), a new layer is added beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from .. import _layers

if TYPE_CHECKING:
    import napari

_DEFAULT_MODEL = {"instance": "nuclei-maskrcnn", "semantic": "nuclei-unet"}


def _registered_models() -> list[str]:
    from ..core.models.registry import list_models

    return list(list_models())


class _SegmentationWidget(Container):
    task = "instance"

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._worker = None
        self._written: dict[str, tuple[object, int]] = {}  # layer name -> (layer, data hash)
        self.image_layer = ComboBox(label="Image", choices=self._image_layers, nullable=False)
        self.model = ComboBox(
            label="Model", choices=self._model_choices, value=self._default_model()
        )
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.tile_size = SpinBox(label="Tile size (0 = auto)", min=0, max=8192, step=64, value=0)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.status = Label(label="", value="")
        self.extend(
            [
                self.image_layer,
                self.model,
                self.device,
                *self._task_controls(),
                self.tile_size,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        self.run_button.changed.connect(lambda: self.run(blocking=False))
        self.cancel_button.changed.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self.image_layer.reset_choices)
        self.viewer.layers.events.removed.connect(self.image_layer.reset_choices)

    # --- controls ----------------------------------------------------------------------
    def _task_controls(self) -> list:
        return []

    def _default_model(self) -> str | None:
        choices = self._model_choices(None)
        return (
            _DEFAULT_MODEL[self.task]
            if _DEFAULT_MODEL[self.task] in choices
            else (choices[0] if choices else None)
        )

    def _model_choices(self, _widget) -> list[str]:
        from ..core.models.registry import load_model  # noqa: F401  (registers entries)

        return _registered_models()

    def _image_layers(self, _widget) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _engine_kwargs(self) -> dict:
        return {}

    # --- running -----------------------------------------------------------------------
    def _make_generator(self, layer):
        from ..core import predict

        kwargs = {
            "model": self.model.value,
            "device": self.device.value,
            "tile_size": self.tile_size.value or None,
            "channel_axis": None if not layer.rgb else layer.data.ndim - 1,
            **self._engine_kwargs(),
        }
        if self.task == "instance":
            return predict.iter_segment_instances(layer.data, **kwargs)
        return predict.iter_segment_semantic(layer.data, **kwargs)

    def run(self, blocking: bool = False):
        """Segment the chosen image; with ``blocking=True`` return the layers."""
        layer = self.image_layer.value
        if layer is None:
            self._show_error("open an image layer first")
            return None
        self.status.value = ""
        if blocking:
            from ..core.predict import drain

            try:
                result = drain(self._make_generator(layer))
            except Exception as err:
                self._show_error(_message(err))
                raise
            return self._add_result(layer, result)
        from napari.qt.threading import create_worker

        worker = create_worker(self._run_generator, layer, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._add_result(layer, result))
        worker.errored.connect(lambda err: self._show_error(_message(err)))
        worker.aborted.connect(lambda: self._set_status("cancelled; no layer was changed"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        worker.start()
        return worker

    def _run_generator(self, layer):
        return (yield from self._make_generator(layer))

    def cancel(self):
        if self._worker is not None:
            self._worker.quit()

    def _on_progress(self, step):
        self.progress.max = max(1, step.total)
        self.progress.value = step.done

    def _on_finished(self):
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self._worker = None

    def _set_status(self, text: str):
        self.status.value = text

    def _show_error(self, text: str):
        self.status.value = f"Error: {text}"

    # --- results -----------------------------------------------------------------------
    def _add_result(self, source, result) -> list:
        model = str(self.model.value)
        geometry = _layers.geometry_from(source)
        intensity = np.asarray(source.data) if source.data.size <= 64e6 else None
        instances = result if self.task == "instance" else result.instances
        tuples = [
            _layers.labels_layer(
                instances, f"{source.name} instances ({model})", geometry, intensity, model
            ),
            _layers.boxes_layer(instances, f"{source.name} boxes ({model})", geometry, model),
        ]
        if self.task == "semantic":
            tuples.insert(
                0,
                _layers.classes_layer(result, f"{source.name} classes ({model})", geometry, model),
            )
        layers = [self._put_layer(t) for t in tuples]
        self._set_status(f"{len(instances)} objects found")
        return layers

    def _put_layer(self, layer_tuple):
        data, kwargs, kind = layer_tuple
        name = kwargs["name"]
        previous = self._written.get(name)
        if previous is not None:
            layer, fingerprint = previous
            if layer in self.viewer.layers and _fingerprint(layer.data) == fingerprint:
                layer.data = data
                for key in ("features", "scale", "translate"):
                    if key in kwargs:
                        setattr(layer, key, kwargs[key])
                self._written[name] = (layer, _fingerprint(layer.data))
                return layer
        if name in self.viewer.layers:  # edited by the user, or not ours: keep it
            kwargs = {**kwargs, "name": f"{name} [new]"}
        layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self._written[name] = (layer, _fingerprint(layer.data))
        return layer


def _fingerprint(data) -> int:
    if isinstance(data, list):
        return hash(tuple(np.asarray(d).tobytes() for d in data))
    return hash(np.asarray(data).tobytes())


def _message(err: BaseException) -> str:
    from ..core.types import InputError, ModelError

    if isinstance(err, (InputError, ModelError)):
        return str(err)
    return f"{type(err).__name__}: {err}"


class InstanceSegmentationWidget(_SegmentationWidget):
    """Instance segmentation (Mask R-CNN)."""

    task = "instance"

    def _task_controls(self):
        self.score_threshold = FloatSpinBox(
            label="Score threshold", min=0.0, max=1.0, step=0.05, value=0.5
        )
        return [self.score_threshold]

    def _engine_kwargs(self):
        return {"score_threshold": self.score_threshold.value}


class SemanticSegmentationWidget(_SegmentationWidget):
    """Semantic segmentation (U-Net)."""

    task = "semantic"

    def _task_controls(self):
        self.min_size = SpinBox(label="Minimum object size (px)", min=0, max=100000, value=8)
        return [self.min_size]

    def _engine_kwargs(self):
        return {"min_size": self.min_size.value}

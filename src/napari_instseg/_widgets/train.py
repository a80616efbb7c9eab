"""The "Train model" dock widget: fine-tune a model on (image, labels) pairs
from the viewer, typically results the user has just corrected, or on
folders on disk. Training runs in a thread with a live plot of the loss and
the validation score; the saved model is registered at once, so it appears in
the segmentation widgets' model lists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ._common import (
    WrappingLabel,
    add_scrolling_controls,
    button_row,
    device_picker,
    freeze_long_lived_objects_while,
    import_torch,
)

DEFAULT_OUTPUT = Path.home() / "napari-instseg-models" / "finetuned.safetensors"


@dataclass(frozen=True)
class Prepared:
    """The training job is set up (images loaded, base model scored)."""

    job: object  # finetune.FineTuneJob


class TrainWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        from ..core.models import registry

        self.viewer = napari_viewer
        self.pairs: list[tuple] = []  # (image layer, labels layer)
        self._worker = None
        self._history: dict[str, list] = {"it": [], "loss": [], "val_it": [], "val": []}
        self.image_layer = ComboBox(label="Image", choices=self._layers_of("Image"))
        self.labels_layer = ComboBox(label="Labels", choices=self._layers_of("Labels"))
        self.add_pair_button = PushButton(text="Add pair")
        self.clear_pairs_button = PushButton(text="Clear pairs")
        self.pairs_label = WrappingLabel("Pairs", "none")
        self.images_dir = FileEdit(label="or images folder", mode="d", value="")
        self.masks_dir = FileEdit(label="masks folder", mode="d", value="")
        self.base_model = ComboBox(label="Base model", choices=list(registry.list_models()))
        if "nuclei-unet" in self.base_model.choices:
            self.base_model.value = "nuclei-unet"
        self.minutes = FloatSpinBox(label="Time budget (min)", min=0.1, max=1440, value=5.0)
        self.epochs = SpinBox(label="Epochs (0 = use time)", min=0, max=10000, value=0)
        self.val_fraction = FloatSpinBox(
            label="Validation fraction", min=0.05, max=0.9, step=0.05, value=0.2
        )
        self.annotated_only = CheckBox(text="Train only on the annotated region", value=True)
        self.device = device_picker()
        self.output = FileEdit(
            label="Save as", mode="w", filter="*.safetensors", value=str(DEFAULT_OUTPUT)
        )
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.status = WrappingLabel()
        self._figure, self._canvas = _make_plot()
        add_scrolling_controls(
            self,
            [
                self.image_layer, self.labels_layer,
                button_row(self.add_pair_button, self.clear_pairs_button), self.pairs_label,
                self.images_dir, self.masks_dir, self.base_model, self.minutes, self.epochs,
                self.val_fraction, self.annotated_only, self.device, self.output,
                button_row(self.train_button, self.cancel_button), self.progress, self.status,
            ],
            self._canvas,
        )  # fmt: skip
        self.add_pair_button.changed.connect(self.add_pair)
        self.clear_pairs_button.changed.connect(self.clear_pairs)
        self.train_button.changed.connect(lambda: self.train(blocking=False))
        self.cancel_button.changed.connect(self.cancel)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.image_layer.reset_choices)
            event.connect(self.labels_layer.reset_choices)
        registry.on_registry_change(self._on_registry_change)

    def _layers_of(self, kind):
        def choices(_widget):
            import napari.layers

            cls = getattr(napari.layers, kind)
            return [layer for layer in self.viewer.layers if isinstance(layer, cls)]

        return choices

    def _on_registry_change(self):
        from ..core.models import registry

        current = self.base_model.value
        self.base_model.choices = list(registry.list_models())
        if current in self.base_model.choices:
            self.base_model.value = current

    # --- pairs -------------------------------------------------------------------------
    def add_pair(self, image=None, labels=None):
        image = image if image is not None else self.image_layer.value
        labels = labels if labels is not None else self.labels_layer.value
        if image is None or labels is None:
            self.status.value = "Error: choose an image and a labels layer"
            return
        spatial = image.data.shape[:-1] if image.rgb else image.data.shape
        if tuple(spatial) != tuple(labels.data.shape):
            self.status.value = (
                f"Error: {image.name} {tuple(spatial)} and {labels.name} "
                f"{labels.data.shape} differ in shape"
            )
            return
        self.pairs.append((image, labels))
        self.pairs_label.value = "; ".join(f"{i.name} + {lab.name}" for i, lab in self.pairs)

    def clear_pairs(self):
        self.pairs.clear()
        self.pairs_label.value = "none"

    def _samples(self, info):
        """AnnotatedImages from the pairs (2D, or each slice of a stack) and folders."""
        from ..core.training import finetune

        samples = []
        for image, labels in self.pairs:
            data, mask = np.asarray(image.data), np.asarray(labels.data)
            if data.ndim == mask.ndim + (1 if image.rgb else 0) and mask.ndim > 2:
                planes = [
                    (f"{image.name}{idx}", data[idx], mask[idx])
                    for idx in np.ndindex(*mask.shape[:-2])
                    if mask[idx].any()
                ]
            else:
                planes = [(image.name, data, mask)]
            for name, plane, plane_mask in planes:
                samples.append(
                    finetune.annotated(
                        name,
                        plane,
                        plane_mask,
                        info,
                        annotated_region_only=self.annotated_only.value,
                    )
                )
        folder = str(self.images_dir.value)
        if folder not in ("", "."):
            samples += finetune.load_annotated_folder(
                self.images_dir.value,
                self.masks_dir.value,
                info,
                annotated_region_only=self.annotated_only.value,
            )
        if not samples:
            raise ValueError("add an (image, labels) pair or choose folders first")
        return samples

    # --- training ----------------------------------------------------------------------
    def _work(self):
        import_torch()
        import torch

        from ..core.models.loading import load_model
        from ..core.models.user_settings import remember_checkpoint
        from ..core.training import finetune

        base = load_model(self.base_model.value, self.device.value)
        output = Path(self.output.value)
        job = finetune.prepare(
            self._samples(base.info),
            model=base,
            val_fraction=self.val_fraction.value,
            epochs=self.epochs.value or None,
            max_minutes=self.minutes.value,
            device=self.device.value,
            name=output.stem,
        )
        yield Prepared(job)
        yield from job.trainer.steps()
        saved = job.save(output)
        name = remember_checkpoint(saved)
        after = job.trainer.state.best_score
        del job
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return name, saved, after

    def train(self, blocking: bool = False):
        """Start training; ``blocking=True`` runs in this thread and returns
        (registered model name, checkpoint path, best validation score)."""
        self._history = {"it": [], "loss": [], "val_it": [], "val": []}
        self._baseline = None
        self.status.value = ""
        if blocking:
            from ..core.draining import drain

            try:
                value = drain(self._work(), self._on_yield)
            except Exception as err:
                self._on_error(err)
                raise
            self._on_done(value)
            return value
        from napari.qt.threading import create_worker

        worker = create_worker(self._work, _start_thread=False)
        worker.yielded.connect(self._on_yield)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(
            lambda: setattr(self.status, "value", "Cancelled; nothing was saved.")
        )
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.train_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "Preparing (loading images, scoring the base model)…"
        freeze_long_lived_objects_while(worker, self.viewer)
        worker.start()
        return worker

    def cancel(self):
        if self._worker is not None:
            self._worker.quit()

    def _on_yield(self, message):  # Prepared, or core.training.loop.TrainingStep
        if isinstance(message, Prepared):
            job = message.job
            self._baseline = job.baseline.get("score")
            text = [
                f"Training on {len(job.trainer.train_samples)} image(s), validating on "
                f"{len(job.trainer.val_samples)}."
            ]
            text += [f"Warning: {w}" for w in job.warnings]
            self.status.value = " ".join(text)
            return
        show_training_step(self.progress, self._figure, self._canvas, self._history, message)

    def _on_done(self, value):
        name, path, after = value
        self.progress.value = self.progress.max
        before = "n/a" if self._baseline is None else f"{self._baseline:.3f}"
        self.status.value = (
            f"Saved {path} as model '{name}'. Validation score: before {before}, after {after:.3f}."
        )
        _update_plot(self._figure, self._canvas, self._history)

    def _on_error(self, err):
        self.status.value = f"Error: {err}".splitlines()[0]

    def _on_finished(self):
        self.train_button.enabled = True
        self.cancel_button.enabled = False
        self._worker = None


def _make_plot():
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.5, 2.2), tight_layout=True)
    canvas = FigureCanvasQTAgg(figure)
    canvas.setMinimumHeight(180)
    _update_plot(figure, canvas, {"it": [], "loss": [], "val_it": [], "val": []})
    return figure, canvas


def show_training_step(progress, figure, canvas, history: dict, message) -> None:
    """A ``TrainingStep`` on the progress bar and the loss/validation plot
    (the Train and Image series widgets)."""
    step = message.progress
    progress.max = max(1, step.total if step.total < 10**6 else step.done + 1)
    progress.value = step.done
    history["it"].append(step.done)
    history["loss"].append(message.loss)
    if message.scores:
        history["val_it"].append(step.done)
        history["val"].append(message.scores["score"])
    if step.done % 5 == 0 or message.scores:
        canvas.setVisible(True)
        _update_plot(figure, canvas, history)


def _update_plot(figure, canvas, history):
    figure.clear()
    loss_axis = figure.add_subplot(111)
    loss_axis.plot(history["it"], history["loss"], color="tab:blue", lw=1)
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    score_axis = loss_axis.twinx()
    score_axis.plot(history["val_it"], history["val"], "o-", color="tab:orange", ms=3)
    score_axis.set_ylabel("validation score", color="tab:orange")
    score_axis.set_ylim(0, 1)
    canvas.draw_idle()

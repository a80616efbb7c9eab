"""The "Image series" dock widget: a folder of images segmented in the
background, reviewed one image at a time with its linked Labels and Shapes
layers, corrections saved as the user moves on, and a fine-tune on the
reviewed images that then re-segments the rest.

The widget only moves data between napari and ``core.series`` (which owns
the files and the state); segmenting and training run in thread workers with
progress and Cancel, so napari never waits for them.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    Table,
)

from ..core.series.folder import NOT_SEGMENTED, REVIEWED, SEGMENTED
from ._common import (
    UserError,
    WrappingLabel,
    add_scrolling_controls,
    button_row,
    device_picker,
    error_message,
    freeze_long_lived_objects_while,
    import_torch,
    model_choices,
)
from .series_view import SeriesView
from .train import _make_plot, show_training_step

NEXT_KEY, PREVIOUS_KEY = "Alt+Right", "Alt+Left"
COLUMNS = ["image", "state", "objects"]


class ImageSeriesWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        from ..core.models import registry, user_settings

        user_settings.register_remembered_checkpoints()
        self.viewer = napari_viewer
        self.series = None  # core.series.folder.ImageSeries
        self.current: int | None = None
        self.view = SeriesView(napari_viewer)  # the image shown and its result layers
        self._worker = None
        self._trained: str | None = None  # the model the last training made
        self.folder = FileEdit(label="Folder", mode="d", value="")
        self.recursive = CheckBox(text="Include sub-folders", value=False)
        self.labels_folder = FileEdit(label="Labels folder", mode="d")
        self.labels_folder.line_edit.native.setPlaceholderText("empty: the folder's labels/")
        self.open_button = PushButton(text="Open folder")
        self.model = ComboBox(
            label="Model", choices=lambda _: model_choices("instance", "semantic")
        )
        if "nuclei-maskrcnn" in self.model.choices:
            self.model.value = "nuclei-maskrcnn"
        self.device = device_picker(detection=True)
        self.link = ComboBox(label="Link stacks across", choices=["none", "z", "t"], value="none")
        self.segment_button = PushButton(text="Segment all", enabled=False)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.table = Table(value={"data": [], "columns": COLUMNS}, label="Images")
        self.table.native.setMinimumHeight(110)  # three images at least, however full the dock
        self.table.read_only = True
        self.table.native.setSelectionBehavior(self.table.native.SelectionBehavior.SelectRows)
        self.previous_button = PushButton(text=f"◀ Previous ({PREVIOUS_KEY})", enabled=False)
        self.next_button = PushButton(text=f"Next ▶ ({NEXT_KEY})", enabled=False)
        self.reviewed = CheckBox(text="Reviewed (editing marks it)", value=False, enabled=False)
        self.save_button = PushButton(text="Save", enabled=False)
        self.minutes = FloatSpinBox(label="Training time (min)", min=0.5, max=600, value=5.0)
        self.train_button = PushButton(text="Train on reviewed images", enabled=False)
        self.resegment_button = PushButton(text="Re-segment the rest with it", enabled=False)
        self.measure_button = PushButton(text="Save measurements CSV", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.status = WrappingLabel()
        # the loss and validation score while training, as in the Train widget
        self._figure, self._plot = _make_plot()
        self._plot.setVisible(False)
        self._history: dict[str, list] = {}
        add_scrolling_controls(
            self,
            [
                self.folder, self.recursive, self.labels_folder, self.open_button, self.model,
                self.device, self.link, button_row(self.segment_button, self.cancel_button),
                self.table, button_row(self.previous_button, self.next_button),
                button_row(self.reviewed, self.save_button), self.minutes, self.train_button,
                self.resegment_button, self.measure_button, self.progress, self.status,
            ],
            self._plot,
        )  # fmt: skip
        self.open_button.changed.connect(lambda: self.open_folder())
        self.segment_button.changed.connect(lambda: self.segment_all())
        self.cancel_button.changed.connect(self.cancel)
        self.previous_button.changed.connect(lambda: self.step(-1))
        self.next_button.changed.connect(lambda: self.step(1))
        self.save_button.changed.connect(lambda: self.save_current())
        self.train_button.changed.connect(lambda: self.train())
        self.resegment_button.changed.connect(lambda: self.segment_all(redo_segmented=True))
        self.measure_button.changed.connect(lambda: self.save_measurements())
        self.table.native.cellClicked.connect(lambda row, _column: self.show(row))
        registry.on_registry_change(self._on_registry_change)
        self._add_shortcuts()

    # --- opening and browsing ----------------------------------------------------------
    def _add_shortcuts(self) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtGui import QKeySequence
        from qtpy.QtWidgets import QShortcut

        for key, step in ((NEXT_KEY, 1), (PREVIOUS_KEY, -1)):
            shortcut = QShortcut(QKeySequence(key), self.native)
            shortcut.setContext(Qt.ShortcutContext.ApplicationShortcut)
            shortcut.activated.connect(lambda step=step: self.step(step))

    def open_folder(self, folder=None, labels_folder=None, recursive: bool | None = None):
        """Open a folder as a series (its state and labels restored) and show
        its first image not reviewed yet."""
        from ..core.series.folder import ImageSeries

        self.save_current()
        # the typed text: an empty FileEdit's value is the working folder
        folder = folder if folder is not None else self.folder.line_edit.value.strip()
        if labels_folder is None:
            typed = self.labels_folder.line_edit.value.strip()
            labels_folder = None if typed in ("", ".") else typed
        if recursive is not None:
            self.recursive.value = recursive
        try:
            if str(folder) in ("", "."):
                raise UserError("choose a folder of images")
            series = ImageSeries(folder, labels_folder, recursive=self.recursive.value)
        except Exception as err:
            self._show_error(err)
            return None
        self.view.clear()
        self.series, self.current = series, None
        self.folder.value = str(series.folder)
        self._fill_table()
        for button in (self.segment_button, self.train_button, self.measure_button):
            button.enabled = True
        not_reviewed = [k for k in range(len(series)) if series.record(k).state != REVIEWED]
        self.show(not_reviewed[0] if not_reviewed else 0)
        # torchvision's libraries load holding the GIL, the series engine takes 80 ms
        # to import: here, not as Segment all starts
        import_torch(detection=True)
        from ..core.series import runs  # noqa: F401

        self.status.value = f"{series.summary()}. Labels in {series.labels_folder}."
        return series

    def step(self, delta: int) -> None:
        """Show the next (1) or previous (-1) image, saving this one's edits first."""
        if self.series is None or self.current is None:
            return
        target = self.current + delta
        if 0 <= target < len(self.series):
            self.show(target)

    def show(self, index: int) -> None:
        """Show image ``index`` with its labels and boxes (the current one's
        edits are saved first)."""
        if self.series is None or not 0 <= index < len(self.series):
            return
        if index == self.current and self.view.layers:
            return
        try:
            self.save_current()
            image, channel_axis = self.series.read_image(index)
        except Exception as err:
            self._show_error(err)
            return
        self.current = index
        model, device = str(self.model.value), self.device.value
        self.view.show(self.series, index, image, channel_axis, model, device, self._set_status)
        self.table.native.selectRow(index)
        self.reviewed.value = self.series.record(index).state == REVIEWED
        if self._worker is None:  # a running worker reports its own progress
            self.status.value = f"{self.series.images[index].key}. {self.series.summary()}."
        self.reviewed.enabled = self.save_button.enabled = True
        self.previous_button.enabled = index > 0
        self.next_button.enabled = index < len(self.series) - 1

    def edited(self) -> bool:
        """Whether the labels shown were edited since they were shown or saved."""
        return self.view.edited()

    def save_current(self) -> bool:
        """Save the image shown: edited labels as reviewed, or its reviewed
        mark; True when something was written."""
        if self.series is None or self.current is None or "labels" not in self.view.layers:
            return False
        index, record = self.current, self.series.record(self.current)
        if self.view.edited():
            labels = self.view.labels()
            self.series.save(index, labels, reviewed=True, table=self.view.object_table(labels))
            self.view.saved(labels)
            self.reviewed.value = True
        elif self.reviewed.value != (record.state == REVIEWED):
            if record.state == NOT_SEGMENTED and self.reviewed.value:
                self.series.save(index, self.view.labels(), reviewed=True)  # no objects here
            else:
                self.series.mark_reviewed(index, self.reviewed.value)
        else:
            return False
        self._update_row(index)
        return True

    # --- the list ----------------------------------------------------------------------
    def _fill_table(self) -> None:
        from qtpy.QtWidgets import QTableWidgetItem

        table = self.table.native
        table.clear()
        table.setColumnCount(len(COLUMNS))
        table.setHorizontalHeaderLabels(COLUMNS)
        table.setRowCount(len(self.series))
        for index in range(len(self.series)):
            for column, value in enumerate(self._row(index)):
                table.setItem(index, column, QTableWidgetItem(str(value)))
        table.resizeColumnsToContents()

    def _row(self, index: int) -> list:
        record = self.series.record(index)
        key = self.series.images[index].key
        state = "unreadable" if key in self.series.unreadable else record.state
        return [key, state, record.objects if record.state != NOT_SEGMENTED else ""]

    def _update_row(self, index: int) -> None:
        for column, value in enumerate(self._row(index)):
            self.table.native.item(index, column).setText(str(value))

    # --- segmenting --------------------------------------------------------------------
    def segment_all(self, redo_segmented: bool = False, blocking: bool = False):
        """Segment the images not segmented yet (``redo_segmented``: also
        those segmented but not reviewed) in a worker; each image's result is
        saved and listed as it comes, and shown if it is the image on screen."""
        if self.series is None or self._worker is not None:
            return None
        self.save_current()
        from ..core.series.runs import iter_segment_series

        # "Re-segment the rest with it": the model the last training made
        model = self._trained if redo_segmented and self._trained else str(self.model.value)
        device, link = self.device.value, self.link.value
        series = self.series

        def work():
            import_torch(detection=True)
            return (yield from iter_segment_series(
                series, model, redo_segmented=redo_segmented, device=device,
                link=None if link == "none" else link,
            ))  # fmt: skip

        return self._start(work, self._on_segment_event, self._on_segmented, blocking)

    def _on_segment_event(self, event) -> None:
        from ..core.series.runs import ImageFailed, ImageSegmented, SeriesProgress

        if isinstance(event, SeriesProgress):
            self.progress.max = max(1, event.images * 100)
            self.progress.value = int(100 * (event.done_images + event.tiles.fraction))
            key = self.series.images[event.image].key
            self.status.value = f"Segmenting {key} ({event.done_images + 1} of {event.images})…"
        elif isinstance(event, (ImageSegmented, ImageFailed)):
            self._update_row(event.image)
            if event.image == self.current and not self.edited():
                self._reload_current()

    def _reload_current(self) -> None:
        """The image shown got its result: its labels and boxes are replaced,
        the image itself stays (replacing it took 0.13 s of the main thread)."""
        model, device = str(self.model.value), self.device.value
        self.view.show_result(self.series, self.current, model, device, self._set_status)

    def _on_segmented(self, run) -> None:
        self.progress.value = self.progress.max
        self.status.value = f"{run.describe()}. {self.series.summary()}."

    # --- training ----------------------------------------------------------------------
    def train(self, blocking: bool = False, output=None, epochs: float | None = None):
        """Fine-tune the chosen model on the reviewed images (time budget in
        minutes, or ``epochs`` passes from a script); the new model is
        registered and chosen, and "Re-segment the rest" runs it on the images
        not reviewed."""
        if self.series is None or self._worker is not None:
            return None
        self.save_current()
        self._history = {"it": [], "loss": [], "val_it": [], "val": []}
        series, base_name, device = self.series, str(self.model.value), self.device.value
        minutes = self.minutes.value
        output = Path(output) if output else series.next_model_path()

        def work():
            import_torch(detection=True)
            from ..core.series.runs import iter_train_on_reviewed

            return (yield from iter_train_on_reviewed(
                series, base_name, output, minutes=None if epochs else minutes, epochs=epochs,
                device=device,
            ))  # fmt: skip

        return self._start(work, self._on_train_step, self._on_trained, blocking)

    def _on_train_step(self, message) -> None:
        self.status.value = f"Training: {message.progress.message}"
        show_training_step(self.progress, self._figure, self._plot, self._history, message)

    def _on_trained(self, value) -> None:
        name = value.name  # core.series.runs.TrainedModel
        self._trained = name
        if name in self.model.choices:
            self.model.value = name
        self.progress.value = self.progress.max
        before = "n/a" if value.before is None else f"{value.before:.3f}"
        if value.kept_base_weights:
            outcome = f"no checkpoint beat the starting model's {before}: its weights kept"
        else:
            outcome = f"validation {before} → {value.after:.3f}"
        rest = len(self.series.indices(SEGMENTED, NOT_SEGMENTED))
        self.resegment_button.enabled = rest > 0
        self.status.value = (
            f"Trained '{name}' on {value.images} reviewed image(s): {outcome}. Re-segment "
            f"the {rest} image(s) not reviewed with it?"
            + "".join(f" ({note})" for note in value.notes)
        )

    def _on_registry_change(self) -> None:
        current = self.model.value
        self.model.reset_choices()
        if current in self.model.choices:
            self.model.value = current

    # --- measurements ------------------------------------------------------------------
    def save_measurements(self, path=None) -> Path | None:
        """One CSV for the whole folder: image, label id and the measurements
        of every object of every segmented image."""
        from ..core.series.runs import write_series_measurements

        self.save_current()
        path = Path(path) if path else self.series.labels_folder / "measurements.csv"
        try:
            rows = write_series_measurements(self.series, path)
        except Exception as err:
            self._show_error(err)
            return None
        self.status.value = f"Measurements of {rows} objects written to {path}."
        return path

    # --- workers -----------------------------------------------------------------------
    def _start(self, work, on_yield, on_return, blocking: bool):
        if blocking:
            from ..core.draining import drain

            try:
                value = drain(work(), on_yield)
            except Exception as err:
                self._show_error(err)
                raise
            on_return(value)
            return value
        from napari.qt.threading import create_worker

        worker = create_worker(work, _start_thread=False)
        worker.yielded.connect(on_yield)
        worker.returned.connect(on_return)
        worker.errored.connect(self._show_error)
        worker.aborted.connect(lambda: setattr(self.status, "value", "Cancelled."))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.cancel_button.enabled = True
        for button in (self.segment_button, self.train_button, self.resegment_button):
            button.enabled = False
        freeze_long_lived_objects_while(worker, self.viewer)
        worker.start()
        return worker

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()

    def _on_finished(self) -> None:
        self._worker = None
        self.cancel_button.enabled = False
        self.segment_button.enabled = self.train_button.enabled = self.series is not None

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _show_error(self, err) -> None:
        text = err if isinstance(err, (str, UserError)) else error_message(err)
        self.status.value = f"Error: {text}"

"""Model files and bioimage.io packages in the segmentation widgets' model list.

Checkpoints are remembered for later sessions. Our own packages load like
checkpoints; someone else's package whose weights need its own architecture
code runs only after the user confirms they trust it.
"""

from __future__ import annotations

from pathlib import Path


def choose_model_file(widget) -> None:
    """The model list's file choice: a checkpoint or a bioimage.io package."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(
        widget.native, "Load a model", "", "Models (*.safetensors *.zip);;All files (*)"
    )
    if not path:
        widget.model.reset_choices()
    elif path.lower().endswith(".zip"):
        open_package(widget, path)
    else:
        widget.load_checkpoint(path)


def confirm_trust(parent, name: str) -> bool:
    """Ask before running the Python code a package ships."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(
        parent,
        "Run this package's code?",
        f"{name} ships Python code for its network, which runs with your permissions. "
        "Run it only if you trust where the package comes from.\n\nTrust and load it?",
        QMessageBox.Yes | QMessageBox.No,
        QMessageBox.No,
    )
    return answer == QMessageBox.Yes


def open_package(widget, path, confirm=confirm_trust) -> str | None:
    """Check a package for ``widget``'s task, ask for trust where needed, and
    add it to the model list; returns the model value (its path) or None."""
    from ..core.models.architectures import ARCHITECTURES, SEMANTIC
    from ..core.models.bioimageio_import import describe, ours, trust_package
    from ..core.types import ModelError

    path = str(Path(path).resolve())
    try:
        descr = describe(path)
        metadata = ours(descr)
        record = ARCHITECTURES.get(metadata["architecture"]) if metadata else None
        task = record.task if record is not None else SEMANTIC
        if task != widget.task:
            raise ModelError(f"{Path(path).name} is a {task} model; open it in the other widget")
        needs_code = metadata is None and descr.weights.torchscript is None
        if needs_code:
            if not confirm(widget.native, Path(path).name):
                raise ModelError(f"{Path(path).name} was not loaded: its code is not trusted")
            trust_package(path)
    except ModelError as err:
        widget._show_error(str(err))
        widget.model.value = widget._default_model()
        return None
    widget.packages[path] = f"{descr.name} (bioimage.io)"
    widget.model.reset_choices()
    widget.model.value = path
    return path


def open_checkpoint(widget, path) -> str | None:
    """Register a checkpoint file for ``widget``'s task (remembered for later
    sessions) and select it; returns its model name, or None with the reason
    in the widget's status."""
    from ..core.models import checkpoint, user_settings
    from ..core.models.architectures import ARCHITECTURES, SEMANTIC
    from ..core.types import ModelError

    try:
        metadata = checkpoint.read_metadata(path)
        record = ARCHITECTURES.get(metadata.get("architecture"))
        if record is None or record.task != widget.task:
            other = "Instance" if widget.task == SEMANTIC else "Semantic"
            raise ModelError(
                f"{Path(path).name} is a {metadata.get('architecture')} model; open it in "
                f"the {other} segmentation widget"
            )
        name = user_settings.remember_checkpoint(path)
    except ModelError as err:
        widget._show_error(str(err))
        widget.model.value = widget._default_model()
        return None
    widget.model.reset_choices()
    widget.model.value = name
    return name

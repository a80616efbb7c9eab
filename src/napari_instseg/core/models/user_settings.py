"""What the plugin remembers between sessions: the checkpoints a user loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..types import ModelError
from .registry import register_checkpoint


def user_config_dir() -> Path:
    """Where the plugin keeps user settings (``NAPARI_INSTSEG_CONFIG_DIR`` overrides)."""
    override = os.environ.get("NAPARI_INSTSEG_CONFIG_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "napari-instseg"


def _remembered_file() -> Path:
    return user_config_dir() / "checkpoints.json"


def remembered_checkpoints() -> list[str]:
    """Checkpoint paths the user loaded before (missing files are skipped)."""
    try:
        paths = json.loads(_remembered_file().read_text())
    except (OSError, ValueError):
        return []
    return [p for p in paths if isinstance(p, str) and Path(p).exists()]


def remember_checkpoint(path: str | os.PathLike) -> str:
    """Register a checkpoint and remember it for later sessions; returns its name."""
    path = Path(path).resolve()
    name = register_checkpoint(path)
    paths = [p for p in remembered_checkpoints() if Path(p) != path] + [str(path)]
    try:
        _remembered_file().parent.mkdir(parents=True, exist_ok=True)
        _remembered_file().write_text(json.dumps(paths[-20:], indent=1))
    except OSError:
        pass  # remembering is a convenience; the model is registered anyway
    return name


def register_remembered_checkpoints() -> None:
    for path in remembered_checkpoints():
        try:
            register_checkpoint(path)
        except ModelError:
            continue

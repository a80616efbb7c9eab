"""The layering rules of docs/architecture.md, checked."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import napari_instseg

SRC = Path(napari_instseg.__file__).parent


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_importing_the_package_does_not_import_torch():
    assert _run("import sys, napari_instseg; print('torch' in sys.modules)") == "False"


def test_listing_models_and_their_settings_does_not_import_torch():
    # the widgets do this when they open; torch takes 1-2 s to import
    code = (
        "import sys\n"
        "from napari_instseg.core.models import registry, user_settings\n"
        "user_settings.register_remembered_checkpoints()\n"
        "print(registry.models_for_task('instance'), registry.stored_postprocess('nuclei-unet'))\n"
        "print('torch' in sys.modules)"
    )
    assert _run(code).splitlines()[-1] == "False"


def test_architecture_doc_names_every_module():
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    missing = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p.name != "__init__.py" and f"`{p.relative_to(SRC).as_posix()}`" not in doc
    ]
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_no_source_file_is_over_400_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long


def test_core_imports_neither_napari_nor_qt():
    modules = sorted(
        "napari_instseg." + ".".join(p.relative_to(SRC).with_suffix("").parts)
        for p in (SRC / "core").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui', 'vispy')]\n"
        "print(bad)"
    )
    assert _run(code) == "[]"


def test_core_modules_never_import_upward():
    import ast

    for path in (SRC / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                assert node.level <= 2 or not names, path
                if node.level == 2 and path.parent.name == "core":
                    raise AssertionError(f"{path.name} imports above core")
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in ("napari", "qtpy", "magicgui"), f"{path.name} imports {name}"
                assert not name.startswith(("napari_instseg._", "_widgets", "_layers")), path


@pytest.mark.parametrize(
    "python_name",
    [
        c["python_name"]
        for c in yaml.safe_load((SRC / "napari.yaml").read_text())["contributions"]["commands"]
    ],
)
def test_manifest_python_names_resolve(python_name):
    import importlib

    module, attr = python_name.split(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-instseg")
    manifest.validate_imports()
    names = {w.display_name for w in manifest.contributions.widgets}
    assert names == {
        "Instance segmentation (Mask R-CNN)",
        "Semantic segmentation (U-Net)",
        "Evaluate segmentation",
        "Train model",
        "Curate labels",
    }
    assert {s.key for s in manifest.contributions.sample_data} == {"nuclei", "nuclei-histology"}

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
        "Image series",
    }
    assert {s.key for s in manifest.contributions.sample_data} == {"nuclei", "nuclei-histology"}


def _imports() -> dict[str, set[tuple[str, str]]]:
    """{module: {(imported module, imported name)}} of every import inside the
    package, function-local ones included, with relative imports resolved."""
    import ast

    modules = {}
    for path in SRC.rglob("*.py"):
        parts = ["napari_instseg", *path.relative_to(SRC).with_suffix("").parts]
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        name = ".".join(parts if parts[-1] != "__init__" else parts[:-1])
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, node.module] if node.module else base)
                found |= {(module, alias.name) for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {(alias.name, "") for alias in node.names}
        modules[name] = {(m, n) for m, n in found if m.startswith("napari_instseg")}
    return modules


def _module_edges(modules: dict) -> dict[str, set[str]]:
    """Module -> the package modules it imports (a name that is itself a
    module counts as that module)."""
    edges = {}
    for name, imported in modules.items():
        targets = set()
        for module, item in imported:
            target = f"{module}.{item}" if f"{module}.{item}" in modules else module
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one node (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def _subpackage(module: str) -> str:
    """``napari_instseg.core.engine`` for any module under ``core/engine/``;
    modules directly in ``core/`` and the package stand for themselves."""
    parts = module.split(".")
    if len(parts) > 3 and parts[1] == "core":
        return ".".join(parts[:3])
    if len(parts) > 2 and parts[1] in ("commands", "_widgets"):
        return ".".join(parts[:2])
    return module


def test_no_module_imports_another_that_imports_it_back():
    assert _cycles(_module_edges(_imports())) == []


def test_subpackages_import_each_other_one_way_only():
    edges: dict[str, set[str]] = {}
    for module, targets in _module_edges(_imports()).items():
        group = _subpackage(module)
        edges.setdefault(group, set()).update(
            t for t in map(_subpackage, targets) if t != group and not group.startswith(t + ".")
        )
    assert _cycles(edges) == []


def test_the_cycle_check_finds_a_cycle():
    # the check above would pass on any graph if _cycles never found one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_across_subpackages():
    modules = _imports()
    crossing = [
        f"{module} imports {source}.{name}"
        for module, imported in modules.items()
        for source, name in imported
        if name.startswith("_")
        and not name.startswith("__")
        and f"{source}.{name}" not in modules  # a module of its own, not a name in one
        and _subpackage(source) != _subpackage(module)
    ]
    assert crossing == []


def test_no_core_subpackage_holds_more_than_twelve_modules():
    sizes = {
        folder.name: len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
        for folder in (SRC / "core").iterdir()
        if folder.is_dir() and (folder / "__init__.py").exists()
    }
    assert sizes and max(sizes.values()) <= 12, sizes


def test_public_functions_list_every_option_in_their_signature():
    import dataclasses
    import inspect

    from napari_instseg.core.engine.options import InstanceOptions, SemanticOptions

    for function, options in (
        (napari_instseg.segment_semantic, SemanticOptions),
        (napari_instseg.iter_segment_semantic, SemanticOptions),
        (napari_instseg.segment_instances, InstanceOptions),
        (napari_instseg.iter_segment_instances, InstanceOptions),
    ):
        parameters = inspect.signature(function).parameters
        for field in dataclasses.fields(options):
            parameter = parameters[field.name]
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
            assert parameter.default == field.default
            assert parameter.annotation is not inspect.Parameter.empty
            assert f"{field.name}: " in function.__doc__


def test_api_reference_page_is_current():
    script = SRC.parents[1] / "scripts" / "make_api_reference.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

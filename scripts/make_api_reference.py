"""Write docs/api.md, the reference of napari_instseg's public API, from the
signatures and docstrings of the names ``napari_instseg`` exports.

    python scripts/make_api_reference.py          # rewrite docs/api.md
    python scripts/make_api_reference.py --check  # exit 1 if it is out of date

``tests/test_architecture.py`` runs the check, so the page stays complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path

import napari_instseg

TARGET = Path(__file__).resolve().parents[1] / "docs" / "api.md"
SECTIONS = {
    "segment_semantic": "Segmentation",
    "load_model": "Models",
    "link_stack": "Labels: linking, curation, metrics",
    "ImageSeries": "A folder under review",
    "read_image": "Files and tables",
    "InstanceResult": "Results and errors",
}
HEADER = """# API reference

`import napari_instseg as nis` gives every name below (imported lazily: `import
napari_instseg` alone does not import torch). This page is written from the
signatures and docstrings by `scripts/make_api_reference.py`; a test fails when it
is out of date. Each option of the segmentation functions is also in `help()`.
"""


def _annotation(annotation) -> str:
    """A type as a reader would write it: ``Progress``, not its module path."""
    text = inspect.formatannotation(annotation)
    text = re.sub(r"\bnapari_instseg(\.\w+)*\.(?=[A-Z])", "", text)  # our classes by name
    for prefix in ("collections.abc.", "typing.", "pathlib."):
        text = text.replace(prefix, "")
    return text


def _signature(name: str, obj) -> str:
    try:  # the types themselves, not the strings `from __future__ import annotations` leaves
        signature = inspect.signature(obj, eval_str=True)
    except NameError:
        signature = inspect.signature(obj)
    parameters, star_written = [], False
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and not star_written:
            parameters.append("*")
            star_written = True
        star_written = star_written or parameter.kind is parameter.VAR_POSITIONAL
        prefix = {parameter.VAR_POSITIONAL: "*", parameter.VAR_KEYWORD: "**"}
        text = prefix.get(parameter.kind, "") + parameter.name
        if parameter.annotation is not parameter.empty:
            text += f": {_annotation(parameter.annotation)}"
        if parameter.default is not parameter.empty:
            spaced = parameter.annotation is not parameter.empty  # as PEP 8 writes defaults
            text += f"{' = ' if spaced else '='}{parameter.default!r}"
        parameters.append(text)
    returns = ""
    if signature.return_annotation is not signature.empty:
        returns = f" -> {_annotation(signature.return_annotation)}"
    one_line = f"{name}({', '.join(parameters)}){returns}"
    if len(one_line) <= 88:
        return one_line
    body = "".join(f"    {p},\n" for p in parameters)
    return f"{name}(\n{body}){returns}"


def _option_table(options_class) -> list[str]:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(options_class):
        meaning = field.metadata["help"].replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{field.default!r}` | {meaning} |")
    return rows


def _entry(name: str, obj) -> str:
    kind = "class" if inspect.isclass(obj) else "function"
    doc = inspect.getdoc(obj) or ""
    options_class = getattr(obj, "options_class", None)
    if options_class is not None:
        doc = doc.split("\n\nOptions:\n")[0]
    lines = [f"### `{name}`", "", f"{kind} in `{obj.__module__}`", ""]
    if kind == "function" or dataclasses.is_dataclass(obj) or "__init__" in vars(obj):
        lines += ["```python", _signature(name, obj), "```", ""]
    lines += [doc, ""]
    if options_class is not None:
        lines += ["Options (keyword only):", "", *_option_table(options_class), ""]
    elif dataclasses.is_dataclass(obj) and any(
        f.metadata.get("help") for f in dataclasses.fields(obj)
    ):
        lines += [*_option_table(obj), ""]
    return "\n".join(lines)


def reference() -> str:
    parts = [HEADER]
    for name in napari_instseg._API:
        if name in SECTIONS:
            parts.append(f"## {SECTIONS[name]}\n")
        parts.append(_entry(name, getattr(napari_instseg, name)))
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check docs/api.md is current")
    args = parser.parse_args()
    text = reference()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run python scripts/make_api_reference.py")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

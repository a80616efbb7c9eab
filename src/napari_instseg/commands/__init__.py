"""The commands of the ``napari-instseg`` command line, one module each
(``cli.py`` holds the parser); errors are one line without a traceback."""

from __future__ import annotations

import sys

EXIT_OK, EXIT_FAILED = 0, 1


class CommandError(Exception):
    """A failure to report as one line, without a traceback."""


def report_error(message: str) -> None:
    lines = str(message).strip().splitlines() or ["unknown error"]
    print(f"error: {lines[0]}", file=sys.stderr)

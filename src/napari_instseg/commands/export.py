"""``napari-instseg export-bioimageio``: a model as a bioimage.io package."""

from __future__ import annotations

import sys
from pathlib import Path

from . import EXIT_OK, CommandError


def cmd_export_bioimageio(args) -> int:
    from ..core.types import ModelError

    output = Path(args.output)
    if output.suffix.lower() != ".zip":
        raise CommandError(f"{output}: the package must be a .zip file")
    if output.exists() and not args.overwrite:
        raise CommandError(f"{output} exists (--overwrite replaces it)")
    try:
        from ..core.models.bioimageio_export import export_bioimageio

        export_bioimageio(args.model, output)
    except ImportError:
        raise CommandError(
            "exporting needs the bioimageio extra: pip install 'napari-instseg[bioimageio]'"
        ) from None
    except ModelError as err:
        raise CommandError(str(err)) from None
    print(f"wrote {output} (check it with: bioimageio test {output})", file=sys.stderr)
    return EXIT_OK

"""The ``napari-instseg`` command line: its parser and ``main``; each command
lives in ``commands/`` (models, predict, train, evaluate, export-bioimageio,
demo).

Errors are printed as one line (``error: FILE: reason``) without a traceback
unless ``--debug``; a batch keeps going past a bad file and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys

from .commands import EXIT_FAILED, CommandError, report_error
from .commands.demo import cmd_demo
from .commands.engine_flags import add_engine_flags
from .commands.evaluate import cmd_evaluate
from .commands.export import cmd_export_bioimageio
from .commands.models import cmd_models
from .commands.predict import cmd_predict
from .commands.train import cmd_train
from .core.models.architectures import ARCHITECTURES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-instseg",
        description="Deep-learning segmentation of microscopy images (U-Net, Mask R-CNN).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the available models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("predict", help="segment image files, writing labels and boxes")
    p.add_argument(
        "inputs", nargs="+", help="image files (TIFF, PNG, JPEG, OME-Zarr or zarr) or folders"
    )
    p.add_argument(
        "--output-format",
        choices=["tiff", "zarr"],
        default=None,
        help="labels as TIFF or as OME-Zarr label images (default: zarr for zarr inputs)",
    )
    p.add_argument(
        "--model",
        default="nuclei-unet",
        help="model name, .safetensors checkpoint or bioimage.io package (.zip or folder)",
    )
    p.add_argument(
        "--trust-package",
        action="store_true",
        help="let a bioimage.io package's own architecture code run (only for packages you trust)",
    )
    p.add_argument("-o", "--outdir", default=".", help="output folder (default: .)")
    add_engine_flags(p)
    p.add_argument(
        "--cluster",
        metavar="local[:N]",
        help="segment large 2D images block by block on a local dask cluster of N workers "
        "(local: one per core, as many as memory allows)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="segment block by block on a running dask scheduler (e.g. tcp://host:8786)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="block side in cluster mode (default: of 1024-4096 px, the one that finishes "
        "soonest on the cluster's workers)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose outputs are complete (resumes an interrupted batch)",
    )
    p.add_argument("--coco", help="also write all results to this COCO JSON file")
    p.add_argument("--progress", action="store_true", help="show progress bars even when piped")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="fine-tune a model (or train a new one) on your masks")
    p.add_argument("--model", default="nuclei-unet", help="model name or checkpoint to fine-tune")
    p.add_argument(
        "--arch",
        choices=list(ARCHITECTURES),
        help="train a new model of this architecture instead (needs --classes)",
    )
    p.add_argument("--classes", help="comma-separated class names of a new model")
    p.add_argument("--images", required=True, help="folder of training images")
    p.add_argument(
        "--masks",
        required=True,
        help="folder of label images with the same file names (instance ids, or "
        "class ids with --semantic; optional STEM_classes.csv per mask)",
    )
    p.add_argument("--val-images")
    p.add_argument("--val-masks")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of the images held out when no validation folders are given",
    )
    p.add_argument(
        "--semantic", action="store_true", help="masks are class maps (multi-class semantic U-Net)"
    )
    p.add_argument(
        "--ignore-value",
        type=int,
        default=None,
        help="mask value of pixels that are not annotated (excluded from the loss)",
    )
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this long and keep the best model so far",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--name", help="model name stored in the checkpoint (default: file stem)")
    p.add_argument("--run-dir", help="folder for training state and log.csv (default: temp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--at-model-size",
        action="store_true",
        help="rescale each image so its objects have the model's trained size; the new "
        "model rescales new images alike (always on for an image series' labels folder)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score predicted labels against ground truth")
    p.add_argument("gt", help="ground-truth label image or folder")
    p.add_argument("pred", help="predicted label image or folder (a _labels suffix is ignored)")
    p.add_argument("--thresholds", default="0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export-bioimageio", help="write a U-Net as a bioimage.io model package (.zip)"
    )
    p.add_argument("model", help="model name or .safetensors checkpoint")
    p.add_argument("-o", "--output", required=True, help="package to write (.zip)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.set_defaults(func=cmd_export_bioimageio)

    p = sub.add_parser("demo", help="open napari with the nuclei sample, the widgets and a result")
    p.add_argument("--model", default=None, help="model to run (default: the bundled ones)")
    p.add_argument("--screenshot", help="save a screenshot of the window here and exit")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    try:
        return args.func(args)
    except CommandError as err:
        if args.debug:
            raise
        report_error(str(err))
        return EXIT_FAILED
    except KeyboardInterrupt:
        report_error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

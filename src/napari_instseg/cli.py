"""The ``napari-instseg`` command line: models, predict, evaluate, demo.

Errors are printed as one line (``error: FILE: reason``) without a traceback
unless ``--debug``; a batch keeps going past a bad file and exits non-zero.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from .core.files import IMAGE_SUFFIXES, atomic_write

EXIT_OK, EXIT_FAILED = 0, 1


class CommandError(Exception):
    """A failure to report as one line, without a traceback."""


def _error(message: str) -> None:
    lines = str(message).strip().splitlines() or ["unknown error"]
    print(f"error: {lines[0]}", file=sys.stderr)


def _expand_inputs(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


def _unique_stems(files: list[Path]) -> tuple[list[Path], int]:
    """Inputs whose outputs would not collide; a later file with a stem seen
    before (a/x.tif and b/x.tif, x.tif and x.png) is reported and skipped."""
    seen: dict[str, Path] = {}
    kept, skipped = [], 0
    for path in files:
        if path.stem in seen:
            _error(
                f"{path}: same name as {seen[path.stem]}; its outputs would overwrite "
                "the other's (skipped)"
            )
            skipped += 1
            continue
        seen[path.stem] = path
        kept.append(path)
    return kept, skipped


# --- models -------------------------------------------------------------------------------


def cmd_models(args) -> int:
    from .core.models.registry import _REGISTRY

    width = max(len(n) for n in _REGISTRY)
    for name, entry in _REGISTRY.items():
        state = "ready" if entry.available() else "not downloaded/installed"
        print(f"{name:<{width}}  {entry.description} [{state}]")
    return EXIT_OK


# --- predict ------------------------------------------------------------------------------


def _write_predictions(stem: str, outdir: Path, instances, semantic=None) -> None:
    import tifffile

    atomic_write(
        outdir / f"{stem}_labels.tif",
        lambda p: tifffile.imwrite(p, instances.labels, compression="zlib"),
    )
    if semantic is not None:
        atomic_write(
            outdir / f"{stem}_semantic.tif",
            lambda p: tifffile.imwrite(p, semantic.classes, compression="zlib"),
        )
    stack_shape = instances.labels.shape[:-2]

    def write_csv(path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            header = [
                "label_id",
                "class_id",
                "class_name",
                "score",
                "y_min",
                "x_min",
                "y_max",
                "x_max",
            ]
            writer.writerow((["stack_index"] if stack_shape else []) + header)
            names = instances.instance_class_names
            for row in range(len(instances)):
                lead = [int(instances.stack_index[row])] if stack_shape else []
                box = [int(v) for v in instances.boxes[row]]
                writer.writerow(
                    lead
                    + [
                        int(instances.label_ids[row]),
                        int(instances.class_ids[row]),
                        names[row],
                        f"{float(instances.scores[row]):.4f}",
                        *box,
                    ]
                )

    atomic_write(outdir / f"{stem}_boxes.csv", write_csv)


def cmd_predict(args) -> int:
    from tqdm import tqdm

    from .core import predict
    from .core.data import read_image
    from .core.models.registry import load_model
    from .core.types import Cancelled, InputError, ModelError

    outdir = Path(args.outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        if not os.access(outdir, os.W_OK):
            raise CommandError(f"{outdir}: output folder is not writable")
        loaded = load_model(args.model, args.device)
    except ModelError as err:
        raise CommandError(str(err)) from None
    except OSError as err:
        raise CommandError(f"{outdir}: cannot create output folder ({err.strerror})") from None
    coco = None
    if args.coco:
        from .core.export import CocoBuilder

        coco = CocoBuilder()
    files = _expand_inputs(args.inputs)
    if not files:
        raise CommandError("no input images (TIFF, PNG or JPEG files or folders of them)")
    files, failures = _unique_stems(files)
    show = sys.stderr.isatty() or args.progress
    for path in tqdm(files, desc="images", unit="image", disable=not show or len(files) < 2):
        try:
            image = read_image(path)
            kwargs = dict(
                device=args.device,
                tile_size=args.tile_size,
                overlap=args.overlap,
                channel_axis=args.channel_axis,
            )
            with tqdm(total=0, desc=path.name, unit="tile", leave=False, disable=not show) as bar:

                def report(step, bar=bar):
                    bar.total = step.total
                    bar.n = step.done
                    bar.refresh()

                if loaded.info.task == "semantic":
                    semantic = predict.segment_semantic(
                        image, loaded, progress=report, return_probabilities=False, **kwargs
                    )
                    instances = semantic.instances
                else:
                    semantic = None
                    instances = predict.segment_instances(
                        image,
                        loaded,
                        score_threshold=args.score_threshold,
                        mask_threshold=args.mask_threshold,
                        progress=report,
                        **kwargs,
                    )
            _write_predictions(path.stem, outdir, instances, semantic)
            if coco is not None:
                _add_to_coco(coco, path.name, instances)
            if args.verbose:
                print(f"{path}: {len(instances)} objects", file=sys.stderr)
        except (
            InputError,
            ModelError,
            Cancelled,
            OSError,
            ValueError,
            MemoryError,
            RuntimeError,
        ) as err:
            if args.debug:
                raise
            failures += 1
            _error(f"{path}: {err}")
    if coco is not None:
        target = Path(args.coco)
        try:
            atomic_write(target, lambda p: p.write_text(json.dumps(coco.document())))
        except OSError as err:
            _error(f"{target}: cannot write COCO file ({err.strerror})")
            failures += 1
    return EXIT_FAILED if failures else EXIT_OK


def _add_to_coco(coco, file_name: str, instances) -> None:
    """Add a result to the COCO document; stacks go in slice by slice."""
    for index, plane in instances.planes():
        suffix = f"[{','.join(map(str, index))}]" if index else ""
        coco.add(file_name + suffix, plane)


# --- evaluate -----------------------------------------------------------------------------


def _pair_label_files(gt: Path, pred: Path) -> list[tuple[str, Path, Path]]:
    if gt.is_file() and pred.is_file():
        return [(gt.stem, gt, pred)]
    if not (gt.is_dir() and pred.is_dir()):
        raise CommandError("GT and PRED must both be files or both be folders")
    from .core.data import paired_files

    pairs = paired_files(gt, pred, both_label_files=True)
    if not pairs:
        raise CommandError(f"no file stems in common between {gt} and {pred}")
    return pairs


def cmd_evaluate(args) -> int:
    from .core.data import read_image
    from .core.metrics import score_dataset

    try:
        thresholds = [float(t) for t in args.thresholds.split(",")]
    except ValueError:
        raise CommandError(f"--thresholds: not a list of numbers: {args.thresholds}") from None
    if not all(0 < t <= 1 for t in thresholds):
        raise CommandError("--thresholds must lie in (0, 1]")
    pairs = _pair_label_files(Path(args.gt), Path(args.pred))

    def load():
        for name, gt, pred in pairs:
            yield name, read_image(gt), read_image(pred)

    try:
        score = score_dataset(load(), thresholds)
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from None
    summary = score.total.summary()
    print(
        f"{len(pairs)} image(s), {summary['n_true']} true and {summary['n_pred']} predicted objects"
    )
    print(f"{'IoU':>5} {'AP':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'mIoU':>6} {'PQ':>6}")
    for i, t in enumerate(summary["thresholds"]):
        print(
            f"{t:>5.2f} {summary['ap'][i]:>6.3f} {summary['precision'][i]:>6.3f} "
            f"{summary['recall'][i]:>6.3f} {summary['f1'][i]:>6.3f} "
            f"{summary['mean_iou'][i]:>6.3f} {summary['panoptic_quality'][i]:>6.3f}"
        )
    if args.json:
        out = Path(args.json)
        text = json.dumps({**summary, "per_image": score.per_image}, indent=1)
        try:
            atomic_write(out, lambda p: p.write_text(text))
        except OSError as err:
            raise CommandError(f"{out}: cannot write ({err.strerror})") from None
    return EXIT_OK


# --- train ------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .core import finetune
    from .core.models.registry import ModelInfo, load_model
    from .core.predict import drain
    from .core.types import Cancelled, InputError, ModelError

    try:
        if args.arch:
            if not args.classes:
                raise CommandError("--arch needs --classes (e.g. --classes nucleus)")
            info = ModelInfo(
                name="new",
                architecture=args.arch,
                config={},
                class_names=["background", *args.classes.split(",")],
            )
            model = None
        else:
            model = load_model(args.model, args.device)
            info = model.info
        kwargs = dict(semantic=args.semantic, ignore_value=args.ignore_value)
        train = finetune.load_annotated_folder(args.images, args.masks, info, **kwargs)
        val = None
        if args.val_images or args.val_masks:
            if not (args.val_images and args.val_masks):
                raise CommandError("give both --val-images and --val-masks")
            val = finetune.load_annotated_folder(args.val_images, args.val_masks, info, **kwargs)
        output = Path(args.output)
        job = finetune.prepare(
            train,
            model=model,
            architecture=args.arch,
            class_names=args.classes.split(",") if args.classes else None,
            val=val,
            val_fraction=args.val_fraction,
            epochs=args.epochs,
            max_minutes=args.max_minutes,
            device=args.device,
            name=args.name or output.stem,
            run_dir=args.run_dir,
            semantic=args.semantic,
            seed=args.seed,
        )
    except (InputError, ModelError) as err:
        raise CommandError(str(err)) from None
    for warning in job.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if job.baseline:
        print(f"validation before training: {job.baseline['score']:.3f}", file=sys.stderr)
    trainer = job.trainer
    total = None if args.max_minutes and args.epochs is None else trainer.config.iterations
    with tqdm(total=total, desc="training", unit="it", disable=args.quiet) as bar:

        def report(step):
            bar.update(step.done - bar.n)
            bar.set_postfix_str(step.message)

        try:
            drain(trainer.run(), report)
        except (Cancelled, KeyboardInterrupt):
            print("interrupted: saving the best model so far", file=sys.stderr)
    saved = job.save(output)
    best = trainer.state.best_score
    print(
        f"saved {saved} (best validation score {best:.3f} at iteration "
        f"{trainer.state.best_iteration} of {trainer.state.iteration})"
    )
    return EXIT_OK


# --- demo ---------------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(screenshot=args.screenshot, model=args.model)


# --- main ---------------------------------------------------------------------------------


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
    p.add_argument("inputs", nargs="+", help="image files (TIFF, PNG, JPEG) or folders")
    p.add_argument("--model", default="nuclei-unet", help="model name or .safetensors path")
    p.add_argument("-o", "--outdir", default=".", help="output folder (default: .)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--tile-size", type=int, default=None)
    p.add_argument("--overlap", type=int, default=None)
    p.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="Mask R-CNN detections to keep (default: the model's own, else 0.5)",
    )
    p.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="Mask R-CNN mask probability counted as inside (default: the model's own, else 0.5)",
    )
    p.add_argument(
        "--channel-axis",
        type=int,
        default=None,
        help="axis of channels in a multichannel image (RGB is found itself)",
    )
    p.add_argument("--coco", help="also write all results to this COCO JSON file")
    p.add_argument("--progress", action="store_true", help="show progress bars even when piped")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="fine-tune a model (or train a new one) on your masks")
    p.add_argument("--model", default="nuclei-unet", help="model name or checkpoint to fine-tune")
    p.add_argument(
        "--arch",
        choices=["unet", "maskrcnn"],
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score predicted labels against ground truth")
    p.add_argument("gt", help="ground-truth label image or folder")
    p.add_argument("pred", help="predicted label image or folder (a _labels suffix is ignored)")
    p.add_argument("--thresholds", default="0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_evaluate)

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
        _error(str(err))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``napari-instseg train``: fine-tune a model, or train a new one, on image/mask folders."""

from __future__ import annotations

import sys
from pathlib import Path

from . import EXIT_OK, CommandError


def cmd_train(args) -> int:
    from tqdm import tqdm

    from ..core.draining import drain
    from ..core.models.info import ModelInfo
    from ..core.models.loading import load_model
    from ..core.series.folder import reviewed_stems
    from ..core.training import finetune
    from ..core.types import Cancelled, InputError, ModelError

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
        # an image series' labels folder: its reviewed images are the annotations
        reviewed = reviewed_stems(args.masks)
        if reviewed is not None:
            if not reviewed:
                raise CommandError(f"{args.masks}: no image of this series is reviewed yet")
            print(f"image series: training on its {len(reviewed)} reviewed image(s)",
                  file=sys.stderr)  # fmt: skip
        train = finetune.load_annotated_folder(
            args.images, args.masks, info, stems=reviewed, **kwargs
        )
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
            # a series' labels: the same loop as the Image series widget
            at_model_size=args.at_model_size or reviewed is not None,
        )
    except (InputError, ModelError) as err:
        raise CommandError(str(err)) from None
    for warning in job.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for note in job.notes:
        print(note, file=sys.stderr)
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

"""``napari-instseg evaluate``: score predicted label files against ground truth."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.io.files import atomic_write
from . import EXIT_OK, CommandError


def _pair_label_files(gt: Path, pred: Path) -> list[tuple[str, Path, Path]]:
    if gt.is_file() and pred.is_file():
        return [(gt.stem, gt, pred)]
    if not (gt.is_dir() and pred.is_dir()):
        raise CommandError("GT and PRED must both be files or both be folders")
    from ..core.io.images import paired_files

    pairs = paired_files(gt, pred, both_label_files=True)
    if not pairs:
        raise CommandError(f"no file stems in common between {gt} and {pred}")
    return pairs


def cmd_evaluate(args) -> int:
    from ..core.io.images import read_image
    from ..core.labels.metrics import score_dataset

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

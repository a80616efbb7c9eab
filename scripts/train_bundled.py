"""Train the bundled nuclei models from ../shared/data/dsb2018 (CC0).

    python scripts/train_bundled.py unet --run-dir ~/instseg-runs/unet [--resume]
    python scripts/train_bundled.py maskrcnn --run-dir ~/instseg-runs/maskrcnn [--resume]

Runs are resumable (``--resume``) and log to ``RUN_DIR/log.csv``; the best
model by validation AP50 is ``RUN_DIR/best.safetensors``. ``--install`` copies
it into the package as ``weights/nuclei-<model>.safetensors`` (float16).
The same script runs on CPU or GPU (``--device``, ``--batch-size``).

The frozen test images (``scripts/splits/dsb2018-test.csv``) are left out of
the training images (``--exclude-split``, the default); ``--include-test``
trains on all train images, for the final retrain of a model to be bundled
with the same recipe (its test figures come from the run that held them out).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import tifffile
import torch

from napari_instseg.core.devices import resolve_device
from napari_instseg.core.models import checkpoint
from napari_instseg.core.models.bundled import bundled_weights_path
from napari_instseg.core.models.info import ModelInfo
from napari_instseg.core.models.loaded import LoadedModel, build_model
from napari_instseg.core.training.config import TrainConfig
from napari_instseg.core.training.finetune import NEW_MODEL_CONFIGS
from napari_instseg.core.training.recipes import MaskRCNNTrainer, UNetTrainer
from napari_instseg.core.training.samples import AnnotatedImage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_test_split import SPLIT_FILE, read_split  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018"
NORMALIZATION = {"low": 1.0, "high": 99.8}
# The same architectures as new models trained with the `train` command. The
# Mask R-CNN has lean heads (box 256-d, mask 64 channels, fewer RPN proposals
# in training): about half the time per iteration of torchvision's defaults.
UNET_CONFIG = {**NEW_MODEL_CONFIGS["unet"], "num_classes": 3}
MASKRCNN_CONFIG = {**NEW_MODEL_CONFIGS["maskrcnn"], "num_classes": 2}
DEFAULTS = {  # per model: iterations, batch size, learning rate, warm-up
    "unet": {"iterations": 3000, "batch_size": 8, "learning_rate": 2e-3, "warmup": 200},
    "maskrcnn": {"iterations": 6000, "batch_size": 4, "learning_rate": 1e-3, "warmup": 300},
}


def model_info(model: str, overrides: dict | None = None) -> ModelInfo:
    """The bundled model's description, with ``overrides`` of its architecture."""
    if model == "unet":
        return ModelInfo(
            name="nuclei-unet",
            architecture="unet",
            config={**UNET_CONFIG, **(overrides or {})},
            class_names=["background", "nucleus", "boundary"],
            in_channels=3,
            normalization=NORMALIZATION,
            tile_size=512,
            description="U-Net (background/nucleus/boundary) for nuclei, trained on DSB2018",
            postprocess={"min_size": 8, "instance_class": "nucleus"},
        )
    config = {**MASKRCNN_CONFIG, **(overrides or {})}
    backbone = config["backbone"].replace("resnet", "ResNet-")
    return ModelInfo(
        name="nuclei-maskrcnn",
        architecture="maskrcnn",
        config=config,
        class_names=["background", "nucleus"],
        in_channels=3,
        normalization=NORMALIZATION,
        tile_size=512,
        description=f"Mask R-CNN ({backbone}-FPN) for nuclei, trained on DSB2018",
    )


def held_out_ids(split_file: Path | None) -> frozenset[str]:
    """The ids of ``split_file`` (the frozen test split), or none for None."""
    if split_file is None:
        return frozenset()
    if not split_file.exists():
        raise SystemExit(f"{split_file}: no such split file (--include-test trains on all)")
    return frozenset(row["id"] for row in read_split(split_file))


def manifest_rows(data: Path, split: str, exclude: frozenset[str] = frozenset()) -> list[dict]:
    """The manifest's rows of ``split`` (``train`` or ``val``), in its order,
    less the ids in ``exclude``: the images a model trains on, or is scored on."""
    with open(data / "manifest.csv") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split and r["id"] not in exclude]


def load_split(
    data: Path, split: str, limit: int | None = None, exclude: frozenset[str] = frozenset()
) -> list[AnnotatedImage]:
    samples = []
    for row in manifest_rows(data, split, exclude)[:limit]:
        image = tifffile.imread(data / split / "images" / f"{row['id']}.tif")
        labels = tifffile.imread(data / split / "masks" / f"{row['id']}.tif")
        samples.append(AnnotatedImage.create(row["id"], image, labels, NORMALIZATION))
    return samples


def default_data_workers(device: torch.device) -> int:
    """Beside a GPU, batch making is the bottleneck; on a CPU the cores are the model's."""
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def parse_config_overrides(pairs: list[str]) -> dict:
    """``["backbone=resnet34", "box_head_size=512"]`` as a dict; values are read
    as JSON where they parse (numbers, lists), else kept as strings."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--config expects KEY=VALUE, got {pair!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def load_fitting_weights(module, state: dict, allow_fresh: bool) -> list[str] | None:
    """Load ``state`` into ``module``. Tensors missing from ``state`` or shaped
    differently (layers that ``--config`` changed) keep their random start when
    ``allow_fresh``; their names are returned. None when some do not fit and
    ``allow_fresh`` is False (nothing is loaded then)."""
    own = module.state_dict()
    fresh = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if fresh and not allow_fresh:
        return None
    module.load_state_dict({k: state[k] for k in own if k not in fresh}, strict=False)
    return fresh


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["unet", "maskrcnn"])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--resume", action="store_true")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument(
        "--exclude-split",
        type=Path,
        default=SPLIT_FILE,
        help="leave these images (a split file's ids) out of training "
        "(default: the frozen test split, scripts/splits/dsb2018-test.csv)",
    )
    held_out.add_argument(
        "--include-test",
        action="store_true",
        help="train on all train images, the test split too: only for the final "
        "retrain of a model to be bundled, with a recipe chosen without them",
    )
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="scale jitter of the crops (default 0.7 1.5)",
    )
    parser.add_argument(
        "--lowres-probability",
        type=float,
        default=0.0,
        help="share of crops shrunk 1.5-2.5x and enlarged back (detail lost as at "
        "a lower magnification); default 0",
    )
    parser.add_argument(
        "--touching-weight",
        type=float,
        default=1.0,
        help="U-Net: loss weight of pixels where two nuclei are within 2 px (default 1)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this much training time; the learning-rate decay then "
        "follows the time spent (for a fixed lease on a GPU machine)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--data-workers",
        type=int,
        default=None,
        help="processes making batches ahead of the training loop "
        "(default: 0 on a CPU, whose cores train; up to 8 beside a GPU)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only N images (smoke test)")
    parser.add_argument("--init", type=Path, help="start from this checkpoint's weights")
    parser.add_argument(
        "--sample-weighting", choices=["uniform", "area", "balanced"], default="uniform"
    )
    parser.add_argument(
        "--cpu-bfloat16",
        action="store_true",
        help="U-Net: bfloat16 autocast on CPUs with native bfloat16 (about 1.5x faster)",
    )
    parser.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="change the architecture, e.g. backbone=resnet34 box_head_size=512 "
        "(keys of the model's builder; values are JSON)",
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="only copy RUN_DIR/best.safetensors into the package (fp16)",
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="PATH",
        help="only copy RUN_DIR/best.safetensors to PATH in float16, as --install does",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.install or args.export:
        state, metadata = checkpoint.load_checkpoint(args.run_dir / "best.safetensors")
        metadata.pop("format_version")
        target = args.export or bundled_weights_path(f"nuclei-{args.model}")
        checkpoint.save_checkpoint(target, state, metadata, half_precision=True)
        print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
        return 0

    device = resolve_device(args.device)
    defaults = DEFAULTS[args.model]
    config = TrainConfig(
        iterations=args.iterations or defaults["iterations"],
        batch_size=args.batch_size or defaults["batch_size"],
        learning_rate=args.learning_rate or defaults["learning_rate"],
        warmup_iterations=defaults["warmup"],
        val_every=args.val_every,
        seed=args.seed,
        sample_weighting=args.sample_weighting,
        cpu_bfloat16=args.cpu_bfloat16,
        max_minutes=args.max_minutes,
        touching_weight=args.touching_weight,
        data_workers=(
            default_data_workers(device) if args.data_workers is None else args.data_workers
        ),
    )
    config.augment.crop_size = args.crop_size
    if args.scale_range:
        config.augment.scale_range = tuple(args.scale_range)
    config.augment.lowres_probability = args.lowres_probability
    info = model_info(args.model, parse_config_overrides(args.config))
    module = build_model(info)
    if args.init:  # continue from earlier weights with a fresh optimiser and schedule
        state, init_metadata = checkpoint.load_checkpoint(args.init)
        fresh = load_fitting_weights(module, state, allow_fresh=bool(args.config))
        if fresh is None:
            raise SystemExit(
                f"{args.init}: its weights do not fit this architecture (check --config)"
            )
        if fresh:
            print(f"--init: {len(fresh)} tensors start fresh: {', '.join(fresh)}")
        info.postprocess = init_metadata.get("postprocess", info.postprocess)
    module = module.to(device)
    loaded = LoadedModel(module, info, device)
    t0 = time.time()
    split_file = None if args.include_test else args.exclude_split
    exclude = held_out_ids(split_file)
    train = load_split(args.data, "train", args.limit, exclude)
    val = load_split(args.data, "val", args.limit)
    print(
        f"loaded {len(train)} train / {len(val)} val images in {time.time() - t0:.0f}s "
        f"({len(exclude)} test images held out)",
        flush=True,
    )
    manifest_sha = hashlib.sha256((args.data / "manifest.csv").read_bytes()).hexdigest()
    provenance = {
        "data": "DSB2018 stage1_train (BBBC038), lopuhin fixes @30354551, CC0",
        "manifest_sha256": manifest_sha,
        "script": "scripts/train_bundled.py",
        "git_commit": git_commit(),
        "device": str(device),
        "init": str(args.init) if args.init else None,
        "held_out": (
            f"{len(exclude)} images of {split_file.name} "
            f"(sha256 {hashlib.sha256(split_file.read_bytes()).hexdigest()})"
            if split_file
            else "none (--include-test: trained on all train images)"
        ),
        "torch": torch.__version__,
    }
    trainer_class = UNetTrainer if args.model == "unet" else MaskRCNNTrainer
    trainer = trainer_class(loaded, train, val, config, args.run_dir, provenance)
    if args.resume and trainer.resume():
        print(f"resumed at iteration {trainer.state.iteration}", flush=True)
    last_print = 0.0
    for progress in trainer.run():
        if time.time() - last_print > 60:
            print(f"{progress.done}/{progress.total} {progress.message}", flush=True)
            last_print = time.time()
    print(f"done: best ap50 {trainer.state.best_score:.3f} at {trainer.state.best_iteration}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

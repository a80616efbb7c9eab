"""Fine-tuning (or training from scratch) on a user's own annotations.

Shared by the ``train`` command and the "Train model" widget: load pairs,
split validation, pick a schedule that fits a time budget, train with the
resumable ``Trainer``, and write the best model as a checkpoint that loads
wherever a model name does.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..devices import resolve_device
from ..engine.diameter import training_diameter
from ..engine.normalize import as_model_channels
from ..engine.reading import channel_axis_beside
from ..io.images import paired_files, read_image, read_instance_classes
from ..models import checkpoint
from ..models.architectures import ARCHITECTURES, SEMANTIC
from ..models.info import ModelInfo
from ..models.loaded import LoadedModel, build_model
from ..models.loading import load_model
from ..types import InputError
from . import recipes
from .config import TrainConfig
from .loop import Trainer
from .samples import AnnotatedImage, at_object_size, without_ignored
from .validation import validate

# Architectures for training from scratch: the bundled models' layouts
NEW_MODEL_CONFIGS = {name: record.new_model_config for name, record in ARCHITECTURES.items()}
MIN_OBJECTS_WITHOUT_WARNING = 20
FREEZE_BATCHNORM_BELOW = 4  # training images
# Fewer reviewed images than this: each gives its last fifth (across its longer
# side) to validation, rather than whole images being held out
STRIP_VALIDATION_BELOW = 4
MIN_STRIP = 48  # px: a narrower strip holds too few whole objects to score


def load_annotated_folder(
    images_dir,
    masks_dir,
    info: ModelInfo,
    semantic: bool = False,
    ignore_value: int | None = None,
    annotated_region_only: bool = False,
    stems: set[str] | None = None,
) -> list[AnnotatedImage]:
    """Image/mask pairs matched by file stem (only ``stems`` when given). For
    multi-class instance models, ``STEM_classes.csv`` beside a mask gives
    ``label_id,class_name`` rows."""
    samples = []
    for stem, image_path, mask_path in paired_files(images_dir, masks_dir):
        if stems is not None and stem not in stems:
            continue
        classes_csv = mask_path.with_name(f"{stem}_classes.csv")
        instance_classes = None
        if classes_csv.exists() and not semantic:
            instance_classes = class_indices(read_instance_classes(classes_csv), info, stem)
        samples.append(
            annotated(
                stem,
                read_image(image_path),
                read_image(mask_path),
                info,
                instance_classes,
                ignore_value,
                annotated_region_only,
                semantic,
            )
        )
    if not samples:
        raise InputError(f"no images in {images_dir} have a mask with the same name in {masks_dir}")
    return samples


def class_indices(names_by_label: dict[int, str], info: ModelInfo, where: str) -> dict[int, int]:
    index = {}
    for label_id, name in names_by_label.items():
        if name not in info.class_names[1:]:
            known = ", ".join(info.class_names[1:])
            raise InputError(f"{where}: class {name!r} is not one of the model's ({known})")
        index[label_id] = info.class_names.index(name)
    return index


def annotated(
    name,
    image,
    labels,
    info: ModelInfo,
    instance_classes=None,
    ignore_value=None,
    annotated_region_only=False,
    semantic=False,
) -> AnnotatedImage:
    image, labels = np.asarray(image), np.asarray(labels)
    channel_axis = channel_axis_beside(image.shape, labels.shape)
    image = image[..., None] if channel_axis is None else np.moveaxis(image, channel_axis, -1)
    image = as_model_channels(image, info.in_channels)
    if labels.dtype.kind not in "iub":
        raise InputError(f"{name}: masks must hold integer labels, not {labels.dtype}")
    if semantic:
        valid = labels if ignore_value is None else labels[labels != ignore_value]
        if valid.size and (valid.min() < 0 or valid.max() >= len(info.class_names)):
            raise InputError(
                f"{name}: class map values must be 0..{len(info.class_names) - 1} "
                f"(background and {', '.join(info.class_names[1:])}), found {int(valid.max())}"
            )
    return AnnotatedImage.create(
        name,
        image,
        labels.astype(np.int64),
        info.normalization,
        instance_classes,
        ignore_value,
        annotated_region_only,
    )


@dataclass
class FineTuneJob:
    """A prepared training run: the trainer plus what the user should know."""

    trainer: Trainer
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was done with the images
    baseline: dict = field(default_factory=dict)  # validation scores before training
    images_diameter: float | None = None  # saved with the model (ModelInfo)

    def save(self, output, tune_postprocess: bool = True) -> Path:
        """Copy the best checkpoint (by validation) to ``output``. For U-Nets
        that derive instances, the seed threshold and minimum object size are
        then re-chosen on the validation images (a new domain often has other
        nucleus sizes than the training data)."""
        trainer = self.trainer
        best = trainer.run_dir / "best.safetensors"
        if not best.exists():  # no validation ran: save the current weights
            trainer.save_model(best, trainer.last_scores)
        state, metadata = checkpoint.load_checkpoint(best)
        metadata.pop("format_version")
        if (
            tune_postprocess
            and trainer.val_samples
            and trainer.loaded.info.task == SEMANTIC
            and not trainer.semantic  # instances derived from the class map
        ):
            # (choosing a Mask R-CNN's score and mask thresholds so, on 1-2
            # validation images, lost 0.016 AP50 on average in the review loop)
            from .tuning import best_postprocess, sweep_postprocess

            model = load_model(best, trainer.loaded.device)
            scores = sweep_postprocess(model, trainer.val_samples)
            chosen = best_postprocess(scores)
            where = f"the validation share of fine-tuning ({len(trainer.val_samples)} images)"
            metadata["postprocess"] = {**metadata.get("postprocess", {}), **chosen,
                                       "tuned_on": where}  # fmt: skip
            metadata["training"]["postprocess_validation"] = {
                "ap50": scores[(chosen["seed_threshold"], chosen["min_size"])][0]
            }
        metadata["images_diameter"] = self.images_diameter
        return checkpoint.save_checkpoint(Path(output), state, metadata)


def prepare(
    train: list[AnnotatedImage],
    *,
    model=None,
    architecture: str | None = None,
    class_names: list[str] | None = None,
    val: list[AnnotatedImage] | None = None,
    val_fraction: float = 0.2,
    epochs: float | None = None,
    max_minutes: float | None = None,
    device: str = "auto",
    name: str = "finetuned",
    run_dir=None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    semantic: bool = False,
    measure_baseline: bool = True,
    seed: int = 0,
    at_model_size: bool = False,
) -> FineTuneJob:
    """Set up training on ``train`` (AnnotatedImage list, see ``annotated``).

    ``model`` (name, path or LoadedModel) is fine-tuned; or ``architecture``
    ("unet"/"maskrcnn") with ``class_names`` (without background) trains a
    new one. Without ``val``, ``val_fraction`` of the images is held out
    (at least one); with fewer than ``STRIP_VALIDATION_BELOW`` images, that
    fraction of each image instead (a strip across its longer side), or, for
    a single image too small to cut, the image serves both (with a warning).
    ``at_model_size`` rescales each image so its objects have the size the
    model was trained at (its ``object_diameter``), as the image series does;
    the saved model then keeps the images' own size (``images_diameter``)
    and rescales new images by it.
    """
    warnings: list[str] = []
    notes: list[str] = []
    loaded = _starting_model(model, architecture, class_names, device, name, semantic)
    trained = loaded.info.object_diameter
    # during training the samples are at the size it sees them: no default rescale
    loaded.info.images_diameter = images_diameter = None
    if at_model_size and trained and not semantic:
        everything = list(train) + list(val or [])
        images_diameter = training_diameter(
            without_ignored(s.labels, s.ignore_value) for s in everything
        )
    if images_diameter is not None:  # too few objects to measure: trained as they are
        train, factors = at_object_size(list(train), trained)
        if val:
            val = at_object_size(list(val), trained)[0]
        notes.append(
            f"images rescaled {min(factors):.2f}-{max(factors):.2f}x so that their objects "
            f"measure the model's {trained:.1f} px; it brings new images of "
            f"{images_diameter} px objects to that size itself"
        )
    train, val, split_warning = _split(list(train), val, val_fraction, seed)
    if split_warning:
        warnings.append(split_warning)
    record = ARCHITECTURES[loaded.info.architecture]
    if not record.learns_ignored_pixels and any(s.ignore_value is not None for s in train):
        warnings.append(
            f"{record.title} cannot skip pixels in training: unannotated pixels count "
            "as background (use 'annotated region only' to crop them away)"
        )
    n_objects = sum(sample.object_count for sample in train)
    if not semantic and n_objects < MIN_OBJECTS_WITHOUT_WARNING:
        warnings.append(f"only {n_objects} annotated objects: expect a small improvement at best")
    smallest = min(min(s.labels.shape) for s in train)
    crop = int(min(256, max(32, 2 ** math.floor(math.log2(max(smallest, 32))))))
    batch = batch_size or record.train_batch_size
    if epochs is None and max_minutes is None:
        epochs = 50
    iterations = max(1, math.ceil(epochs * len(train) / batch)) if epochs is not None else 10**7
    finetuning = architecture is None
    config = TrainConfig(
        iterations=iterations,
        batch_size=batch,
        # fine-tuning: 1e-3 gained +0.105 AP50 on average in the domain benchmark, 5e-4 +0.099
        learning_rate=learning_rate or (1e-3 if finetuning else 2e-3),
        warmup_iterations=min(20 if finetuning else 200, max(1, iterations // 10)),
        val_every=max(5, min(100, iterations // 10)) if epochs is not None else 25,
        checkpoint_every=25,
        seed=seed,
        max_minutes=max_minutes,
        # with a handful of crops, batch statistics would wreck BatchNorm's running
        # statistics; with several images they adapt them to the new domain
        freeze_batchnorm=finetuning and len(train) < FREEZE_BATCHNORM_BELOW,
        selection_margin=0.0 if semantic else validation_margin(val),
    )
    config.augment.crop_size = crop
    trainer_class = recipes.trainer_class(record, semantic)
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="instseg-train-"))
    for stale in ("best.safetensors", "state.pt", "log.csv"):  # a fresh run starts clean
        (run_dir / stale).unlink(missing_ok=True)
    provenance = {
        "base_model": str(model)
        if model is not None and not isinstance(model, LoadedModel)
        else getattr(model, "name", None),
        "train_images": [s.name for s in train],
        "val_images": [s.name for s in val],
    }
    trainer = trainer_class(loaded, train, val, config, run_dir, provenance)
    baseline = {}
    if measure_baseline and finetuning and val:
        baseline = validate(loaded, val, semantic=semantic)
        # the base model is the first candidate: training replaces it only with
        # a checkpoint that validates at least as well (never lower than before)
        state = trainer.state
        state.best_score = state.top_score = state.floor_score = baseline["score"]
        trainer.last_scores = baseline
        trainer.save_model(run_dir / "best.safetensors", baseline)
    return FineTuneJob(trainer, warnings, notes, baseline, images_diameter)


def validation_margin(val: list[AnnotatedImage]) -> float:
    """The margin of error of an AP measured on the objects of ``val``: 1/sqrt(n),
    the 95% margin of a proportion over n trials at its widest. Checkpoints
    whose scores differ by less are not told apart (0.19 for 27 objects, 0.05
    for 400)."""
    n_objects = sum(sample.object_count for sample in val)
    return 1 / math.sqrt(max(n_objects, 1))


def _starting_model(model, architecture_name, class_names, device, name, semantic) -> LoadedModel:
    target = resolve_device(device)
    if architecture_name is not None:
        if architecture_name not in ARCHITECTURES:
            known = " or ".join(ARCHITECTURES)
            raise InputError(f"unknown architecture {architecture_name!r} (use {known})")
        record = ARCHITECTURES[architecture_name]
        names = record.new_model_classes(list(class_names or []), semantic)
        info = ModelInfo(
            name=name,
            architecture=architecture_name,
            config={**record.new_model_config, "num_classes": len(names)},
            class_names=names,
            description=f"{record.title} trained with napari-instseg on the user's data",
            postprocess=record.new_model_postprocess(names),
        )
        return LoadedModel(build_model(info).to(target), info, target)
    if model is None:
        raise InputError("choose a model to fine-tune, or an architecture to train from scratch")
    base = load_model(model, device)
    if semantic and not ARCHITECTURES[base.info.architecture].learns_class_maps:
        raise InputError(f"--semantic training needs a U-Net, not a {base.info.architecture}")
    # train a copy, never the caller's (or the cache's) model in place
    info = ModelInfo.from_metadata(
        {
            **base.info.to_metadata(),
            "name": name,
            "description": f"{base.name} fine-tuned with napari-instseg",
        }
    )
    module = build_model(info)
    module.load_state_dict(base.module.state_dict())
    return LoadedModel(module.to(target), info, target)


def _split(train, val, fraction, seed):
    if val:
        return train, val, None
    if len(train) < STRIP_VALIDATION_BELOW:
        # a held-out image would take half of two: every image gives a strip instead
        parts = [sample.split_off(fraction) for sample in train]
        strips = [strip for _, strip in parts]
        if all(min(s.labels.shape) >= MIN_STRIP and s.object_count for s in strips):
            return [kept for kept, _ in parts], strips, None
    if len(train) == 1:
        return (
            train,
            train,
            (
                "one image only: it is used for training and validation, "
                "so the validation score is optimistic"
            ),
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    n_val = min(len(train) - 1, max(1, int(round(fraction * len(train)))))
    return ([train[i] for i in order[n_val:]], [train[i] for i in order[:n_val]], None)

"""Training loops with checkpoints, resume, CSV logs and validation scores.

Used by ``scripts/train_bundled.py`` (the bundled weights) and by the
``train`` command and widget (fine-tuning on a user's annotations).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .data import IGNORE_INDEX, AnnotatedImage, AugmentConfig, augmented_crop, unet_targets
from .metrics import match_counts
from .models import checkpoint
from .models.registry import LoadedModel
from .predict import cpu_has_fast_bfloat16
from .types import Cancelled, Progress


@dataclass
class TrainConfig:
    iterations: int = 6000
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_iterations: int = 200
    class_weights: tuple[float, ...] = (1.0, 1.0, 2.0)
    val_every: int = 500
    checkpoint_every: int = 100
    seed: int = 0
    clip_grad_norm: float = 10.0
    sample_weighting: str = "uniform"  # or "area" or "balanced" (see sample_indices)
    # Fine-tuning on a few images: keep BatchNorm's running statistics from the
    # base model (batches of one small domain would overwrite them) and train
    # only the weights.
    freeze_batchnorm: bool = False
    max_minutes: float | None = None
    # Choosing the model by validation: 0 keeps the best-scoring checkpoint. A
    # positive margin keeps the latest checkpoint scoring within it of the best
    # seen (the validation's margin of error: a few validation objects cannot
    # tell checkpoints apart, and the longer-trained one is then the better bet).
    selection_margin: float = 0.0
    # bfloat16 autocast on CPUs with native bfloat16 units (see
    # predict.cpu_has_fast_bfloat16), for models whose trainer allows it. GPUs
    # always train in bfloat16 autocast.
    cpu_bfloat16: bool = False
    # Processes that make the upcoming batches (crops, augmentation, targets)
    # while the model trains; 0 makes each in the loop. Beside a GPU the loop
    # otherwise waits for them: 16 Mask R-CNN crops of 384 px take 0.35 s to
    # make on one EPYC core, and an iteration on an H200 took 0.69 s in all.
    # Batches are a function of (seed, iteration) alone, so runs are identical
    # with any number of workers.
    data_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainState:
    iteration: int = 0
    best_score: float = -1.0  # validation score of the chosen model
    best_iteration: int = 0
    seconds: float = 0.0
    top_score: float = -1.0  # highest validation score seen


def learning_rate_at(config: TrainConfig, iteration: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak. With a time
    budget, the decay follows whichever runs out first: iterations or time."""
    if iteration < config.warmup_iterations:
        return config.learning_rate * (iteration + 1) / config.warmup_iterations
    progress = (iteration - config.warmup_iterations) / max(
        1, config.iterations - config.warmup_iterations
    )
    progress = max(progress, time_fraction)
    return config.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1, progress))))


def sample_indices(samples: Sequence[AnnotatedImage], config: TrainConfig, rng) -> np.ndarray:
    """Which images the batch's crops come from.

    ``area`` draws an image with probability proportional to the square root
    of its area, so a 1024 x 1024 field (16 crops' worth of pixels) is drawn 4x
    as often as a 256 x 256 one instead of as rarely. ``balanced`` does that
    within each kind of image (``AnnotatedImage.kind``) and gives each kind a
    share proportional to the square root of its area weight: a rare kind
    (13 gray brightfield images among 533 in DSB2018: 7% of area-weighted
    draws, 18% balanced) is seen more often, the common kind still most.
    """
    if config.sample_weighting == "uniform":
        return rng.integers(0, len(samples), config.batch_size)
    weights = np.sqrt(np.array([s.labels.size for s in samples], float))
    if config.sample_weighting == "balanced":
        kinds = np.array([s.kind for s in samples])
        for kind in np.unique(kinds):
            of_kind = kinds == kind
            total = weights[of_kind].sum()
            weights[of_kind] *= np.sqrt(total) / total
    elif config.sample_weighting != "area":
        raise ValueError(f"unknown sample weighting {config.sample_weighting!r}")
    return rng.choice(len(samples), config.batch_size, p=weights / weights.sum())


def unet_batch(
    samples: Sequence[AnnotatedImage],
    config: TrainConfig,
    rng: np.random.Generator,
    semantic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops and targets: boundary-aware classes from instance labels, or the
    class maps themselves (``semantic``)."""
    images, targets = [], []
    for index in sample_indices(samples, config, rng):
        sample = samples[int(index)]
        image, labels = augmented_crop(sample, config.augment, rng)
        images.append(image)
        if semantic:
            target = labels.astype(np.uint8)
            if sample.ignore_value is not None:
                target[labels == sample.ignore_value] = IGNORE_INDEX
        else:
            target = unet_targets(labels, sample.ignore_value)
        targets.append(target)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)).long()


def detection_target(
    labels: np.ndarray, min_area: int = 4, instance_classes: dict[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """torchvision detection target (boxes x1,y1,x2,y2, labels, masks) of a crop;
    slivers cut by the crop edge (< ``min_area`` px or < 2 px wide) are dropped.
    ``instance_classes`` gives each instance's class index (default 1)."""
    from scipy import ndimage

    ids = np.flatnonzero(np.bincount(labels.ravel()) >= min_area)
    ids = ids[ids > 0]
    boxes, keep = [], []
    slices = ndimage.find_objects(labels)
    for label_id in ids:
        sl = slices[label_id - 1]
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        if y1 - y0 >= 2 and x1 - x0 >= 2:
            boxes.append([x0, y0, x1, y1])
            keep.append(label_id)
    keep = np.asarray(keep, dtype=labels.dtype)
    masks = labels[None] == keep[:, None, None]
    classes = [(instance_classes or {}).get(int(i), 1) for i in keep]
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(classes, dtype=torch.int64),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }


def maskrcnn_batch(samples, config: TrainConfig, rng: np.random.Generator):
    images, targets = [], []
    for index in sample_indices(samples, config, rng):
        sample = samples[int(index)]
        image, labels = augmented_crop(sample, config.augment, rng)
        if sample.ignore_value is not None:
            labels = np.where(labels == sample.ignore_value, 0, labels)
        images.append(torch.from_numpy(image))
        targets.append(detection_target(labels, instance_classes=sample.instance_classes))
    return images, targets


def semantic_mean_iou(loaded: LoadedModel, samples: Sequence[AnnotatedImage]) -> float:
    """Mean IoU over the foreground classes, pixels summed over images."""
    from .predict import segment_semantic

    n = len(loaded.info.class_names)
    confusion = np.zeros((n, n), np.int64)
    for sample in samples:
        pred = segment_semantic(
            sample.image, loaded, channel_axis=sample.channel_axis, return_probabilities=False
        ).classes
        valid = sample.labels < n
        if sample.ignore_value is not None:
            valid &= sample.labels != sample.ignore_value
        pairs = sample.labels[valid].astype(np.int64) * n + pred[valid]
        confusion += np.bincount(pairs, minlength=n * n).reshape(n, n)
    inter = np.diag(confusion)[1:]
    union = (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))[1:]
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 0.0


def validate(
    loaded: LoadedModel,
    samples: Sequence[AnnotatedImage],
    thresholds=(0.5, 0.75),
    semantic: bool = False,
) -> dict:
    """Validation scores through the engine, exactly as users get predictions:
    AP at each threshold (counts summed over images), or for semantic models
    trained on class maps the mean IoU of the classes. ``score`` is the one
    that selects the best model."""
    if semantic:
        was_training = loaded.module.training
        loaded.module.eval()
        try:
            miou = semantic_mean_iou(loaded, samples)
        finally:
            loaded.module.train(was_training)
        return {"score": miou, "mean_iou": miou}
    from .predict import segment_instances, segment_semantic

    module = loaded.module
    was_training = module.training
    module.eval()
    total = None
    try:
        for sample in samples:
            if loaded.info.task == "semantic":
                pred = segment_semantic(
                    sample.image,
                    loaded,
                    channel_axis=sample.channel_axis,
                    return_probabilities=False,
                )
                pred = pred.instances.labels
            else:
                pred = segment_instances(
                    sample.image, loaded, channel_axis=sample.channel_axis
                ).labels
            counts = match_counts(*sample.scoreable(pred), thresholds)
            total = counts if total is None else total + counts
    finally:
        module.train(was_training)
    summary = total.summary()
    scores = {f"ap{int(round(t * 100))}": ap for t, ap in zip(thresholds, summary["ap"])}
    return {"score": summary["ap"][0], **scores}


LOG_COLUMNS = ["iteration", "loss", "lr", "score", "ap50", "ap75", "seconds"]


class Trainer:
    """Trains a model from instance masks; resumable from ``run_dir``.

    ``run()`` is a generator that yields ``Progress`` every iteration and
    returns the final ``TrainState``; the best model (by validation AP50) is
    written to ``run_dir/best.safetensors`` as it improves. Subclasses say how
    to make a batch and its loss.
    """

    channels_last = False
    semantic = False  # trained on class maps (scored by mean IoU) instead of instances
    # Dense outputs tolerate bfloat16; box regression does not (8 bits of
    # mantissa move coordinates by pixels), so detectors leave it off on CPUs.
    cpu_bfloat16_allowed = False

    def __init__(
        self,
        loaded: LoadedModel,
        train_samples: Sequence[AnnotatedImage],
        val_samples: Sequence[AnnotatedImage],
        config: TrainConfig,
        run_dir: str | Path,
        provenance: dict | None = None,
    ):
        self.loaded = loaded
        self.train_samples = list(train_samples)
        self.val_samples = list(val_samples)
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.provenance = provenance or {}
        self.state = TrainState()
        module = loaded.module
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(
            module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.log_path = self.run_dir / "log.csv"
        self.last_scores: dict = {}
        self.last_loss: float | None = None
        self.validated_at = 0  # iteration of the latest validation

    def _train_mode(self) -> None:
        self.loaded.module.train()
        if self.config.freeze_batchnorm:
            for layer in self.loaded.module.modules():
                if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                    layer.eval()

    def batch_maker(self) -> Callable[[np.random.Generator], tuple]:
        """A picklable function making one batch from a random generator."""
        raise NotImplementedError

    def _batches(self, first: int) -> Iterator[tuple]:
        """Batches for iterations ``first``, ``first + 1``, ... of this run."""
        config = self.config
        batches = _IterationBatches(self.batch_maker(), config.seed, first, config.iterations)
        if config.data_workers <= 0:
            yield from map(batches.__getitem__, range(len(batches)))
            return
        loader = torch.utils.data.DataLoader(
            batches,
            batch_size=None,
            num_workers=config.data_workers,
            worker_init_fn=_one_thread,
            pin_memory=self.loaded.device.type == "cuda",
        )
        yield from loader

    def _autocast(self):
        """Mixed precision: bfloat16 (no loss scaling needed) on GPUs, and on
        CPUs with native bfloat16 when the config asks and the model allows."""
        device = self.loaded.device
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if (
            device.type == "cpu"
            and self.config.cpu_bfloat16
            and self.cpu_bfloat16_allowed
            and cpu_has_fast_bfloat16()
        ):
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(self, inputs, targets) -> torch.Tensor:
        raise NotImplementedError

    def _choose(self, score: float) -> bool:
        """Whether a checkpoint validating at ``score`` becomes the chosen model."""
        margin = self.config.selection_margin
        self.state.top_score = max(self.state.top_score, score)
        if margin <= 0:
            return score > self.state.best_score
        return score >= self.state.top_score - margin

    # --- persistence -------------------------------------------------------------------
    def save_state(self) -> None:
        path = self.run_dir / "state.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "model": self.loaded.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "state": asdict(self.state),
            },
            tmp,
        )
        tmp.replace(path)

    def resume(self) -> bool:
        """Continue from ``run_dir/state.pt`` if it exists (our own file, still
        loaded with ``weights_only=True``)."""
        path = self.run_dir / "state.pt"
        if not path.exists():
            return False
        saved = torch.load(path, map_location=self.loaded.device, weights_only=True)
        self.loaded.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state = TrainState(**saved["state"])
        self._forget_logged_after(self.state.iteration)
        return True

    def _forget_logged_after(self, iteration: int) -> None:
        """Drop log rows for iterations after the saved state: the resumed run
        redoes them, and duplicate iterations would confuse any plot of the log."""
        if not self.log_path.exists():
            return
        with self.log_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [row for row in rows if int(row["iteration"]) <= iteration]
        if len(kept) == len(rows):
            return
        tmp = self.log_path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        tmp.replace(self.log_path)

    def save_model(self, path: Path, scores: dict) -> None:
        info = self.loaded.info
        training = {
            **self.provenance,
            "config": _jsonable(asdict(self.config)),
            "iteration": self.state.iteration,
            "validation": scores,
            "train_image_count": len(self.train_samples),
            "val_image_count": len(self.val_samples),
            "seconds": round(self.state.seconds, 1),
        }
        metadata = {**info.to_metadata(), "training": training}
        checkpoint.save_checkpoint(path, self.loaded.module.state_dict(), metadata)

    def _log(self, row: dict) -> None:
        new = not self.log_path.exists()
        with self.log_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    # --- loop --------------------------------------------------------------------------
    def run(self, cancel: Callable[[], bool] | None = None) -> Iterator[Progress]:
        config = self.config
        module = self.loaded.module
        self._train_mode()
        started = time.monotonic() - self.state.seconds
        # the budget covers the whole run, resumed parts included
        budget = 60 * config.max_minutes if config.max_minutes else math.inf
        deadline = started + budget
        running_loss = None
        # closing stops the data workers when the run ends early (time, cancel, error)
        with contextlib.closing(self._batches(self.state.iteration)) as batches:
            while self.state.iteration < config.iterations:
                if cancel is not None and cancel():
                    raise Cancelled()
                it = self.state.iteration
                inputs, targets = next(batches)
                lr = learning_rate_at(config, it, (time.monotonic() - started) / budget)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with self._autocast():
                    loss = self.loss(inputs, targets)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.clip_grad_norm)
                self.optimizer.step()
                value = loss.item()
                self.last_loss = value
                running_loss = value if running_loss is None else 0.95 * running_loss + 0.05 * value
                self.state.iteration = it + 1
                self.state.seconds = time.monotonic() - started
                row = {
                    "iteration": it + 1,
                    "loss": round(value, 5),
                    "lr": lr,
                    "ap50": "",
                    "ap75": "",
                    "seconds": round(self.state.seconds, 1),
                }
                last = self.state.iteration >= config.iterations or time.monotonic() > deadline
                if self.val_samples and (self.state.iteration % config.val_every == 0 or last):
                    scores = validate(self.loaded, self.val_samples, semantic=self.semantic)
                    self._train_mode()
                    row.update(scores)
                    self.last_scores = scores
                    self.validated_at = self.state.iteration
                    if self._choose(scores["score"]):
                        self.state.best_score = scores["score"]
                        self.state.best_iteration = self.state.iteration
                        self.save_model(self.run_dir / "best.safetensors", scores)
                self._log(row)
                if self.state.iteration % config.checkpoint_every == 0 or last:
                    self.save_state()
                message = f"loss {running_loss:.4f}"
                if self.state.best_score >= 0:
                    message += f", best validation {self.state.best_score:.3f}"
                yield Progress(self.state.iteration, config.iterations, message)
                if last:
                    break
        return self.state


class UNetTrainer(Trainer):
    """Cross-entropy on background / interior / boundary targets from instance masks."""

    channels_last = True
    cpu_bfloat16_allowed = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.loaded.info.class_names)
        weights = list(self.config.class_weights)[:n] + [1.0] * max(
            0, n - len(self.config.class_weights)
        )
        if self.semantic:
            weights = [1.0] * n
        self.class_weights = torch.tensor(weights, device=self.loaded.device)

    def batch_maker(self):
        return functools.partial(
            unet_batch, self.train_samples, self.config, semantic=self.semantic
        )

    def loss(self, inputs, targets):
        device = self.loaded.device
        logits = self.loaded.module(inputs.to(device).contiguous(memory_format=torch.channels_last))
        return F.cross_entropy(
            logits, targets.to(device), weight=self.class_weights, ignore_index=IGNORE_INDEX
        )


class SemanticUNetTrainer(UNetTrainer):
    """A U-Net trained on class maps (any number of classes), scored by mean IoU."""

    semantic = True


class MaskRCNNTrainer(Trainer):
    """torchvision's Mask R-CNN losses (RPN, box, class, mask) summed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        size = self.config.augment.crop_size
        # crops go in at native resolution during training, as at prediction time
        self.loaded.module.transform.min_size = (size,)
        self.loaded.module.transform.max_size = size

    def batch_maker(self):
        return functools.partial(maskrcnn_batch, self.train_samples, self.config)

    def loss(self, inputs, targets):
        device = self.loaded.device
        images = [image.to(device) for image in inputs]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = self.loaded.module(images, targets)
        return sum(losses.values())


class _IterationBatches(torch.utils.data.Dataset):
    """Item k is the batch of iteration ``first + k``, for DataLoader workers."""

    def __init__(self, make: Callable, seed: int, first: int, stop: int):
        self.make, self.seed, self.first, self.stop = make, seed, first, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.first)

    def __getitem__(self, k: int):
        return self.make(np.random.default_rng([self.seed, self.first + k]))


def _one_thread(_worker_id: int) -> None:
    # workers run numpy/scipy augmentation; torch's threads belong to the training loop
    torch.set_num_threads(1)


def _jsonable(value):
    return json.loads(
        json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    )

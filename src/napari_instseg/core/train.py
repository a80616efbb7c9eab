"""Training loops with checkpoints, resume, CSV logs and validation scores.

Used by ``scripts/train_bundled.py`` (the bundled weights) and by the
``train`` command and widget (fine-tuning on a user's annotations).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .data import AnnotatedImage, AugmentConfig, augmented_crop, unet_targets
from .metrics import match_counts
from .models import checkpoint
from .models.registry import LoadedModel, ModelInfo
from .postprocess import instances_from_classes
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
    max_minutes: float | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainState:
    iteration: int = 0
    best_score: float = -1.0
    best_iteration: int = 0
    seconds: float = 0.0


def learning_rate_at(config: TrainConfig, iteration: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if iteration < config.warmup_iterations:
        return config.learning_rate * (iteration + 1) / config.warmup_iterations
    progress = (iteration - config.warmup_iterations) / max(
        1, config.iterations - config.warmup_iterations
    )
    return config.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1, progress))))


def unet_batch(
    samples: Sequence[AnnotatedImage], config: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = [], []
    for index in rng.integers(0, len(samples), config.batch_size):
        image, labels = augmented_crop(samples[int(index)], config.augment, rng)
        images.append(image)
        targets.append(unet_targets(labels))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)).long()


@torch.inference_mode()
def unet_classes(module: torch.nn.Module, image: np.ndarray, device: torch.device) -> np.ndarray:
    """Class map of a normalised (Y, X, C) image in one forward pass (padded to the divisor)."""
    divisor = getattr(module, "size_divisor", 16)
    h, w = image.shape[:2]
    ph, pw = -h % divisor, -w % divisor
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
    logits = module(x.to(device).contiguous(memory_format=torch.channels_last))
    return logits[0, :, :h, :w].argmax(0).cpu().numpy().astype(np.uint8)


def validate_unet(
    loaded: LoadedModel, samples: Sequence[AnnotatedImage], thresholds=(0.5, 0.75)
) -> dict:
    """AP at each threshold (counts summed over images), instances as the engine derives them."""
    module = loaded.module
    was_training = module.training
    module.eval()
    total = None
    min_size = loaded.info.postprocess.get("min_size", 8)
    for sample in samples:
        classes = unet_classes(module, sample.normalized(), loaded.device)
        pred = instances_from_classes(classes, min_size=min_size)
        counts = match_counts(sample.labels, pred, thresholds)
        total = counts if total is None else total + counts
    module.train(was_training)
    summary = total.summary()
    return {f"ap{int(round(t * 100))}": ap for t, ap in zip(thresholds, summary["ap"])}


class UNetTrainer:
    """Trains a U-Net from instance masks; resumable from ``run_dir``.

    ``run()`` is a generator that yields ``Progress`` every iteration and
    returns the final ``TrainState``; the best model (by validation AP50) is
    written to ``run_dir/best.safetensors`` as it improves.
    """

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
        module = loaded.module.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(
            module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.class_weights = torch.tensor(config.class_weights, device=loaded.device)
        self.log_path = self.run_dir / "log.csv"

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
        return True

    def save_model(self, path: Path, scores: dict) -> None:
        info = self.loaded.info
        training = {
            **self.provenance,
            "config": _jsonable(asdict(self.config)),
            "iteration": self.state.iteration,
            "validation": scores,
            "train_images": len(self.train_samples),
            "val_images": len(self.val_samples),
            "seconds": round(self.state.seconds, 1),
        }
        metadata = {**info.to_metadata(), "training": training}
        checkpoint.save_checkpoint(path, self.loaded.module.state_dict(), metadata)

    def _log(self, row: dict) -> None:
        new = not self.log_path.exists()
        with self.log_path.open("a", newline="") as f:
            writer = csv.DictWriter(
                f, fieldnames=["iteration", "loss", "lr", "ap50", "ap75", "seconds"]
            )
            if new:
                writer.writeheader()
            writer.writerow(row)

    # --- loop --------------------------------------------------------------------------
    def run(self, cancel: Callable[[], bool] | None = None) -> Iterator[Progress]:
        config = self.config
        module = self.loaded.module
        module.train()
        device = self.loaded.device
        started = time.monotonic() - self.state.seconds
        deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else math.inf
        running_loss = None
        while self.state.iteration < config.iterations:
            if cancel is not None and cancel():
                raise Cancelled()
            it = self.state.iteration
            rng = np.random.default_rng([config.seed, it])
            images, targets = unet_batch(self.train_samples, config, rng)
            lr = learning_rate_at(config, it)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            logits = module(images.to(device).contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, targets.to(device), weight=self.class_weights)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            running_loss = (
                loss.item() if running_loss is None else 0.95 * running_loss + 0.05 * loss.item()
            )
            self.state.iteration = it + 1
            self.state.seconds = time.monotonic() - started
            row = {
                "iteration": it + 1,
                "loss": round(loss.item(), 5),
                "lr": lr,
                "ap50": "",
                "ap75": "",
                "seconds": round(self.state.seconds, 1),
            }
            last = self.state.iteration >= config.iterations or time.monotonic() > deadline
            if self.val_samples and (self.state.iteration % config.val_every == 0 or last):
                scores = validate_unet(self.loaded, self.val_samples)
                row.update(scores)
                if scores["ap50"] > self.state.best_score:
                    self.state.best_score = scores["ap50"]
                    self.state.best_iteration = self.state.iteration
                    self.save_model(self.run_dir / "best.safetensors", scores)
            self._log(row)
            if self.state.iteration % config.checkpoint_every == 0 or last:
                self.save_state()
            yield Progress(self.state.iteration, config.iterations, f"loss {running_loss:.4f}")
            if last:
                break
        return self.state


def _jsonable(value):
    return json.loads(
        json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    )


def new_model_info(
    name: str, architecture: str, config: dict, class_names: list[str], **kwargs
) -> ModelInfo:
    return ModelInfo(
        name=name, architecture=architecture, config=config, class_names=class_names, **kwargs
    )

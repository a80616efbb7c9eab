"""Training loops with checkpoints, resume, CSV logs and validation scores.

Used by ``scripts/train_bundled.py`` (the bundled weights) and by the
``train`` command and widget (fine-tuning on a user's annotations).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..devices import cpu_has_fast_bfloat16
from ..engine.diameter import training_diameter
from ..io.files import atomic_write
from ..models import checkpoint
from ..models.loaded import LoadedModel
from ..types import Cancelled, Progress
from .config import TrainConfig, TrainState, learning_rate_at
from .samples import AnnotatedImage
from .validation import validate

LOG_COLUMNS = ["iteration", "loss", "lr", "score", "ap50", "ap75", "seconds"]


@dataclass(frozen=True)
class TrainingStep:
    """One training iteration: its progress, its loss and, after a validation, the scores."""

    progress: Progress
    loss: float | None
    scores: dict | None


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
        if score < self.state.floor_score:  # worse than the model training started from
            return False
        if margin <= 0:
            return score > self.state.best_score
        return score >= self.state.top_score - margin

    # --- persistence -------------------------------------------------------------------
    def save_state(self) -> None:
        state = {
            "model": self.loaded.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": asdict(self.state),
        }
        atomic_write(self.run_dir / "state.pt", lambda tmp: torch.save(state, tmp))

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

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(self.log_path, write)

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
        if not self.semantic:  # the size its objects were learnt at, for diameter=
            measured = training_diameter(sample.labels for sample in self.train_samples)
            metadata["object_diameter"] = measured or info.object_diameter
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

    def steps(self) -> Iterator[TrainingStep]:
        """``run`` with each iteration's loss and, after a validation, its
        scores: what a live plot shows."""
        for step in self.run():
            validated = self.validated_at == step.done
            yield TrainingStep(step, self.last_loss, self.last_scores if validated else None)


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

"""What a training run is told (``TrainConfig``), where it stands
(``TrainState``) and its learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .augmentation import AugmentConfig


@dataclass
class TrainConfig:
    iterations: int = 6000
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_iterations: int = 200
    class_weights: tuple[float, ...] = (1.0, 1.0, 2.0)
    # U-Net: loss weight (times the class weight) of pixels where two objects
    # are within 2 px (``data.touching_zone``), so that touching nuclei are
    # drawn apart rather than merged; 1 weighs them as any other pixel. A CPU
    # fine-tune of the bundled U-Net at 5 lost 0.05-0.07 validation AP50 against
    # the same run at 1 (docs/benchmarks.md), so the bundled recipe leaves it at 1.
    touching_weight: float = 1.0
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
    # tell checkpoints apart, and the longer-trained one is then the better bet),
    # but never one below the starting model's score (``TrainState.floor_score``).
    selection_margin: float = 0.0
    # bfloat16 autocast on CPUs with native bfloat16 units (see
    # devices.cpu_has_fast_bfloat16), for models whose trainer allows it. GPUs
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
    # the starting model's validation score: a fine-tuned checkpoint must reach it
    floor_score: float = -1.0


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

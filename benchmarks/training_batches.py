"""What a training batch costs before the model sees it: the time to make it on
one core, the bytes it carries, and the time to hand it from a data worker to
the training loop.

    python benchmarks/training_batches.py [--data ../shared/data/dsb2018] [--batches 10]

The batches are the GPU lease's (``scripts/train_on_gpu_lease.sh``): U-Net 32
crops of 256 px, Mask R-CNN 16 and 32 crops of 384 px with its scale jitter
(x0.5-1.6) and lost-detail share (0.3), drawn from the train images outside
the frozen test split with balanced sampling. A Mask R-CNN batch carries its
crops as one tensor and its targets packed in five (``batches.packed_targets``:
each crop's label image and the ids of its objects instead of one full-size
mask per object); the loop makes the masks on the training device
(``batches.unpacked_targets``). The form batches had before session 16, a
tensor per crop and per target field with the masks made, is measured beside.
The handover is torch's multiprocessing pickling in one process: the batch's
tensors moved into shared memory (the worker's side), then each one's handle
fetched and mapped (the loop's side). Pinning and the copy to a GPU, which
scale with the bytes, are not measured here.
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (registers how tensors travel: shared memory)

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, machine_description  # noqa: E402
from accuracy_and_speed import DEFAULT_DATA  # noqa: E402

from napari_instseg.core.training.augmentation import AugmentConfig  # noqa: E402
from napari_instseg.core.training.batches import maskrcnn_batch, unet_batch, unpacked_targets  # noqa: E402
from napari_instseg.core.training.config import TrainConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from train_bundled import SPLIT_FILE, held_out_ids, load_split  # noqa: E402


def batch_bytes(batch) -> int:
    tensors = []

    def collect(value):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif isinstance(value, dict):
            list(map(collect, value.values()))
        elif isinstance(value, (list, tuple)):
            list(map(collect, value))

    collect(batch)
    return sum(t.numel() * t.element_size() for t in tensors)


def handover_seconds(batch) -> tuple[float, float]:
    """Seconds to pickle ``batch`` as a DataLoader worker sends it (its tensors
    moved into shared memory) and to unpickle it as the loop receives it (a
    shared-memory handle fetched and mapped per tensor)."""
    start = time.perf_counter()
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(batch)
    sent = time.perf_counter()
    pickle.loads(buffer.getvalue())
    return sent - start, time.perf_counter() - sent


def per_crop_form(images: torch.Tensor, targets: list[dict]):
    """A Mask R-CNN batch (its crops, its unpacked targets) as batches travelled
    before session 16: a tensor of its own per crop and per target field."""
    separate = [{k: v.clone() for k, v in t.items()} for t in targets]
    return [image.clone() for image in images], separate


def measure(name: str, make, count: int, packed_detection: bool) -> None:
    rows = {"made": [], "bytes": [], "sent": [], "received": []}
    before = {"bytes": [], "sent": [], "received": [], "unpacked": []}
    for iteration in range(count):
        start = time.perf_counter()
        batch = make(np.random.default_rng([0, iteration]))
        rows["made"].append(time.perf_counter() - start)
        rows["bytes"].append(batch_bytes(batch))
        sent, received = handover_seconds(batch)
        rows["sent"].append(sent)
        rows["received"].append(received)
        if packed_detection:
            start = time.perf_counter()
            targets = unpacked_targets(batch[1])
            before["unpacked"].append(time.perf_counter() - start)
            old = per_crop_form(batch[0], targets)
            before["bytes"].append(batch_bytes(old))
            sent, received = handover_seconds(old)
            before["sent"].append(sent)
            before["received"].append(received)

    def ms(values):
        return f"{1e3 * np.median(values):6.1f} ms"

    print(
        f"{name:<26} made in {ms(rows['made'])}, {np.mean(rows['bytes']) / 1e6:6.1f} MB,"
        f" sent in {ms(rows['sent'])}, received in {ms(rows['received'])}",
        flush=True,
    )
    if packed_detection:
        print(
            f"{'  one tensor per crop, masks':<26} {'':>16}"
            f" {np.mean(before['bytes']) / 1e6:6.1f} MB, sent in {ms(before['sent'])},"
            f" received in {ms(before['received'])}\n"
            f"{'  masks made in the loop':<26} {ms(before['unpacked'])} (on this CPU)",
            flush=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a data worker
    print(f"{machine_description()}, commit {git_commit()}")
    samples = load_split(args.data, "train", None, held_out_ids(SPLIT_FILE))
    unet = TrainConfig(batch_size=32, sample_weighting="balanced")
    measure("U-Net, 32 x 256 px", lambda rng: unet_batch(samples, unet, rng), args.batches, False)
    for size in (16, 32):
        config = TrainConfig(
            batch_size=size,
            sample_weighting="balanced",
            augment=AugmentConfig(crop_size=384, scale_range=(0.5, 1.6), lowres_probability=0.3),
        )
        measure(
            f"Mask R-CNN, {size} x 384 px",
            lambda rng, config=config: maskrcnn_batch(samples, config, rng),
            args.batches,
            True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

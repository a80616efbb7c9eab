"""GPU throughput of the bundled models in float16, in megapixels per second.

    python benchmarks/gpu_throughput.py [--size 4096] [--batch 8] [--data ../shared/data/dsb2018]
        [--profile]

Two figures per model, both in float16 autocast (the engine's precision on CUDA):
- network: batches of 512x512 nuclei tiles through the network alone, input
  already on the GPU (the U-Net's forward pass; the Mask R-CNN's backbone,
  RPN and heads as the engine runs them, masks left at the heads' 28x28);
- whole call: ``segment_semantic`` / ``segment_instances`` on a size x size
  field (a mosaic of the ``nuclei`` sample), with reading, normalisation,
  tiling, stitching and the instance post-processing on the CPU included.
A torchvision ResNet-18 on the same batches is printed for scale. With
``--data``, the val AP of both models is measured on the GPU too, to show
that float16 keeps the accuracy measured on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, machine_description, median_time  # noqa: E402
from accuracy_and_speed import accuracy, predictors, print_accuracy  # noqa: E402

from napari_instseg import load_model, segment_instances, segment_semantic  # noqa: E402
from napari_instseg.core.devices import autocast_for  # noqa: E402
from napari_instseg.core.models.maskrcnn import detect_without_pasting  # noqa: E402

TILE = 512


def nuclei_field(size: int) -> np.ndarray:
    """A size x size mosaic of the nuclei sample, flipped so that tiles differ."""
    with resources.as_file(resources.files("napari_instseg") / "samples" / "nuclei.tif") as p:
        sample = tifffile.imread(p)
    h, w = sample.shape[:2]
    rows = []
    for i in range(-(-size // h)):
        row = [sample[:: (-1) ** i, :: (-1) ** j] for j in range(-(-size // w))]
        rows.append(np.concatenate(row, 1))
    return np.ascontiguousarray(np.concatenate(rows, 0)[:size, :size])


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_seconds(fn) -> float:
    """Median time of ``fn`` with the GPU's queued work finished, after warm-ups."""

    def synchronised():
        fn()
        _synchronize()

    return median_time(synchronised, repeats=10, warmup=3)


def tile_batch(field: np.ndarray, batch: int, device: torch.device) -> torch.Tensor:
    """``batch`` normalised 512x512 tiles of the field as an NCHW float tensor."""
    low, high = np.percentile(field, (1.0, 99.8))
    per_row, rows = field.shape[1] // TILE, field.shape[0] // TILE
    tiles = []
    for k in range(batch):
        y, x = TILE * ((k // per_row) % rows), TILE * (k % per_row)
        tile = (field[y : y + TILE, x : x + TILE] - low) / (high - low)
        tiles.append(np.repeat(tile[None], 3, 0).astype(np.float32))
    batch = torch.from_numpy(np.stack(tiles)).to(device)
    return batch.contiguous(memory_format=torch.channels_last)


def network_throughput(batch: torch.Tensor, unet, mrcnn) -> dict:
    import torchvision

    device = batch.device
    megapixels = batch.shape[0] * TILE * TILE / 1e6
    out = {}
    resnet = torchvision.models.resnet18().eval().to(device).to(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_for(device):
        out["resnet18 forward (for scale)"] = megapixels / gpu_seconds(lambda: resnet(batch))
    module = unet.module.to(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_for(device):
        out["nuclei-unet network"] = megapixels / gpu_seconds(lambda: module(batch))
    sizes = [(TILE, TILE)] * batch.shape[0]
    threshold = mrcnn.info.postprocess.get("score_threshold", 0.5)
    with torch.inference_mode():
        detections = detect_without_pasting(mrcnn.module, batch, sizes, threshold)
        out["nuclei-maskrcnn network"] = megapixels / gpu_seconds(
            lambda: detect_without_pasting(mrcnn.module, batch, sizes, threshold)
        )
    out["(detections per 512x512 tile)"] = float(np.mean([len(d["boxes"]) for d in detections]))
    return out


def whole_call_throughput(field: np.ndarray, unet, mrcnn) -> tuple[dict, dict]:
    """Mpx/s of each model's whole call, and the objects each found."""
    megapixels = field.size / 1e6
    counts = {}

    def run_unet():
        counts["nuclei-unet"] = len(segment_semantic(field, unet).instances.label_ids)

    def run_mrcnn():
        counts["nuclei-maskrcnn"] = len(segment_instances(field, mrcnn).label_ids)

    out = {
        "nuclei-unet segment_semantic": megapixels / median_time(run_unet, repeats=3),
        "nuclei-maskrcnn segment_instances": megapixels / median_time(run_mrcnn, repeats=3),
    }
    return out, counts


def profile_whole_calls(field: np.ndarray, unet, mrcnn, top: int = 12) -> None:
    """Where each whole call's host time goes: cProfile of one call, the
    engine's functions by cumulative time (GPU work shows up where the host
    waits for it, at the copies back)."""
    import cProfile
    import pstats

    for name, call in [
        ("nuclei-unet", lambda: segment_semantic(field, unet)),
        ("nuclei-maskrcnn", lambda: segment_instances(field, mrcnn)),
    ]:
        profiler = cProfile.Profile()
        profiler.runcall(call)
        _synchronize()
        print(f"\n{name}: one whole call under cProfile, top {top} engine functions")
        stats = pstats.Stats(profiler).sort_stats("cumulative")
        stats.print_stats("napari_instseg", top)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="whole-call field side (px)")
    parser.add_argument("--batch", type=int, default=8, help="512x512 tiles per network batch")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--data", type=Path, help="DSB2018 folder: also measure val AP on the GPU")
    parser.add_argument("--device", default="cuda", help="cpu: only to check the script")
    parser.add_argument(
        "--profile", action="store_true", help="also profile one whole call of each model"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {machine_description()}; commit {git_commit()}")
    field = nuclei_field(args.size)
    unet, mrcnn = load_model("nuclei-unet", device), load_model("nuclei-maskrcnn", device)

    rates = network_throughput(tile_batch(field, args.batch, device), unet, mrcnn)
    print(f"\nNetwork alone, float16, batches of {args.batch} 512x512 tiles on the GPU")
    for name, value in rates.items():
        unit = "" if name.startswith("(") else " Mpx/s"
        print(f"{name:<40} {value:>8.1f}{unit}")

    rates, counts = whole_call_throughput(field, unet, mrcnn)
    print(f"\nWhole call on a {args.size}x{args.size} field (median of 3 after a warm-up)")
    for (name, value), found in zip(rates.items(), counts.values()):
        print(f"{name:<40} {value:>8.1f} Mpx/s  ({found} objects)")
    if args.profile:
        profile_whole_calls(field, unet, mrcnn)

    if args.data:
        print_accuracy(accuracy(args.data, predictors(args.device, classical=False)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

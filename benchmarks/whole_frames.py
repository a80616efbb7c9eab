"""Whole microscope frames through ``predict``, and what calling by name costs.

    python benchmarks/whole_frames.py [--frames 20] [--threads 2] [--data ../shared/data/dsb2018]

1. ``napari-instseg predict`` (in-process, one process) over a folder of
   520x696 uint16 frames made from the DSB2018 520x696 screens (gray channel
   x 257), for each bundled model: seconds per megapixel, against a
   torchvision ResNet-18 forward (1x3x512x512, float32) timed in the same run.
   Targets (issue 21): <= 1.2x (U-Net) and <= 3.5x (Mask R-CNN) the ResNet-18.
   To compare with an older checkout, run this script with that checkout's
   ``src`` first on PYTHONPATH.
2. One 512x512 field by model name against a preloaded model (median of 5):
   target <= 1.15x; and with ``diameter="auto"`` (issue 17: at most +30%).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, machine_description, median_time  # noqa: E402

from napari_instseg import load_model, segment_instances, segment_semantic  # noqa: E402
from napari_instseg.cli import main as cli_main  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
MODELS = {"nuclei-unet": segment_semantic, "nuclei-maskrcnn": segment_instances}


def screen_frames(data: Path, count: int, folder: Path) -> list[Path]:
    """``count`` 520x696 gray frames written as uint16 TIFFs into ``folder``."""
    with open(data / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if (r["height"], r["width"]) == ("520", "696")]
    paths = []
    for row in rows[:count]:
        rgb = tifffile.imread(data / row["split"] / "images" / f"{row['id']}.tif")
        path = folder / f"{row['id'][:12]}.tif"
        tifffile.imwrite(path, rgb[..., 0].astype(np.uint16) * 257)
        paths.append(path)
    return paths


def resnet18_seconds_per_mpx() -> float:
    import torchvision

    net = torchvision.models.resnet18().eval()
    x = torch.rand(1, 3, 512, 512)
    with torch.inference_mode():
        return median_time(lambda: net(x)) / (512 * 512 / 1e6)


def predict_seconds(frames: list[Path], model: str, outdir: Path) -> float:
    start = time.perf_counter()
    code = cli_main(["predict", *map(str, frames), "--model", model, "-o", str(outdir)])
    if code != 0:
        raise SystemExit(f"predict failed with {model}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {machine_description()}, commit {git_commit()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = screen_frames(args.data, args.frames, tmp)
        mpx = len(frames) * 520 * 696 / 1e6
        yardstick = resnet18_seconds_per_mpx()
        print(f"ResNet-18 forward: {yardstick:.3f} s/Mpx")
        for model in MODELS:
            load_model(model, "cpu")  # as in a batch: one load per process
            seconds = predict_seconds(frames, model, tmp / model)
            print(
                f"{model}: predict {len(frames)} frames {seconds:.1f} s, {seconds / mpx:.3f} s/Mpx "
                f"= {seconds / mpx / yardstick:.2f}x ResNet-18"
            )
        field = tifffile.imread(frames[0])[:512, :512]
        for model, segment in MODELS.items():
            loaded = load_model(model, "cpu")
            by_name = median_time(lambda s=segment, m=model: s(field, m, device="cpu"))
            preloaded = median_time(lambda s=segment, m=loaded: s(field, m, device="cpu"))
            auto = median_time(lambda s=segment, m=loaded: s(field, m, diameter="auto"))
            print(
                f"{model}: 512x512 by name {by_name:.3f} s, preloaded {preloaded:.3f} s "
                f"({by_name / preloaded:.2f}x); diameter auto {auto:.3f} s "
                f"({auto / preloaded:.2f}x)"
            )


if __name__ == "__main__":
    main()

"""Pack the DSB2018 training data small enough to travel to a GPU machine, and unpack it there.

    python scripts/pack_training_data.py pack .gpu-data            # here, beside ../shared
    python scripts/pack_training_data.py unpack .gpu-data /tmp/dsb2018   # on the GPU machine

A GPU lease copies the repository and at most 64 MiB in all (the bundled weights
take half). The shared data is 63 MB of TIFFs, mostly gray images stored as three
identical channels. Packed: the frozen test split is left out (it must not be
trained on), gray images keep one channel (lossless PNG), masks are lossless
16-bit PNG, and the colour images (H&E, brightfield) are JPEG at quality 95, the
one lossy step. ``unpack`` writes the shared layout again (manifest, gray images
as three channels), so ``train_bundled.py --data`` reads it as it reads
../shared; the manifest is copied unchanged, so the checkpoints' data hash is the
same.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bundled import SPLIT_FILE, held_out_ids, manifest_rows  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018"
JPEG_QUALITY = 95


def pack(source: Path, target: Path) -> None:
    held_out = held_out_ids(SPLIT_FILE)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "manifest.csv", target / "manifest.csv")
    packed = 0
    for row in manifest_rows(source, "train", held_out) + manifest_rows(source, "val", held_out):
        folder = source / row["split"]
        image = tifffile.imread(folder / "images" / f"{row['id']}.tif")
        labels = tifffile.imread(folder / "masks" / f"{row['id']}.tif")
        stem = target / row["id"]
        if row["gray_rgb"] == "True":
            Image.fromarray(image[..., 0]).save(f"{stem}.gray.png", optimize=True)
        else:
            Image.fromarray(image).save(f"{stem}.rgb.jpg", quality=JPEG_QUALITY)
        Image.fromarray(labels.astype(np.uint16)).save(f"{stem}.mask.png", optimize=True)
        packed += 1
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"packed {packed} images ({len(held_out)} test images left out): {size / 1e6:.1f} MB")


def unpack(source: Path, target: Path) -> None:
    with open(source / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (target / split / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "manifest.csv", target / "manifest.csv")
    unpacked = 0
    for row in rows:
        gray, colour = source / f"{row['id']}.gray.png", source / f"{row['id']}.rgb.jpg"
        if not (gray.exists() or colour.exists()):
            continue  # a held-out test image
        if gray.exists():
            image = np.repeat(np.asarray(Image.open(gray))[..., None], 3, axis=-1)
        else:
            image = np.asarray(Image.open(colour).convert("RGB"))
        labels = np.asarray(Image.open(source / f"{row['id']}.mask.png")).astype(np.uint16)
        folder = target / row["split"]
        tifffile.imwrite(folder / "images" / f"{row['id']}.tif", image)
        tifffile.imwrite(folder / "masks" / f"{row['id']}.tif", labels)
        unpacked += 1
    print(f"unpacked {unpacked} images into {target}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    packing = sub.add_parser("pack")
    packing.add_argument("target", type=Path)
    packing.add_argument("--data", type=Path, default=SHARED)
    unpacking = sub.add_parser("unpack")
    unpacking.add_argument("source", type=Path)
    unpacking.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.data, args.target)
    else:
        unpack(args.source, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hold out a frozen test split from the shared DSB2018 train images (issue 17).

    python scripts/make_test_split.py [--data ../shared/data/dsb2018] [--check]

The split was made once and is committed as ``scripts/splits/dsb2018-test.csv``:
it is never to be regenerated, nor tuned on. This script writes it only where
it is missing; ``--check`` says whether the committed file is still what this
recipe gives from the manifest (it never rewrites it).

Recipe: about 15% of the train images, stratified by image kind (size and
colour, which stand in for experiments; see ``kind_of``). Every stratum of two
or more images gives at least one, so the rare kinds are represented. Within a
stratum the images are sorted by their number of nuclei and taken at evenly
spaced ranks from a seeded offset, so the test images span each kind's density.
The val split stays as it is; training excludes the test ids (``train_bundled.py
--exclude-split``, the default) until a model is finally retrained on all data.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
SPLIT_FILE = Path(__file__).resolve().parent / "splits" / "dsb2018-test.csv"
FRACTION = 0.15
SEED = 17
COLUMNS = ("id", "kind", "height", "width", "n_instances")
HEADER = (
    "# FROZEN test split of the shared DSB2018 train images (issue 17): never regenerate, "
    "never tune on. Made by scripts/make_test_split.py; see scripts/splits/README.md"
)
# (height, width) of the gray kinds; colour images are one kind whatever their size
SIZE_KINDS = {
    (603, 1272): "tissue",
    (1024, 1024): "brightfield",
    (520, 696): "screen-520x696",
    (256, 256): "crop-256x256",
    (360, 360): "fluo-360x360",
    (512, 640): "fluo-512x640",
}
KINDS = ("colour", *SIZE_KINDS.values(), "rare")


def kind_of(row: dict) -> str:
    """The stratum of a manifest row: ``colour`` (``gray_rgb`` False), a gray
    size kind, or ``rare`` for the other sizes lumped together."""
    if str(row["gray_rgb"]) != "True":
        return "colour"
    return SIZE_KINDS.get((int(row["height"]), int(row["width"])), "rare")


def choose_test(rows: list[dict]) -> list[dict]:
    """The test rows among the train ``rows`` of the manifest, sorted by id."""
    chosen = []
    for kind in KINDS:
        stratum = sorted(
            (r for r in rows if kind_of(r) == kind), key=lambda r: (int(r["n_instances"]), r["id"])
        )
        n = len(stratum)
        if n < 2:
            continue
        k = max(1, round(FRACTION * n))
        offset = random.Random(f"{SEED}:{kind}").random()
        chosen += [stratum[int((i + offset) * n / k)] for i in range(k)]
    return sorted(chosen, key=lambda r: r["id"])


def split_text(rows: list[dict]) -> str:
    out = io.StringIO()
    out.write(HEADER + "\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row["id"], kind_of(row), row["height"], row["width"], row["n_instances"]])
    return out.getvalue()


def read_split(path: Path = SPLIT_FILE) -> list[dict]:
    """The rows of a split file (comment lines skipped), as written."""
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def train_rows(data: Path) -> list[dict]:
    with open(data / "manifest.csv") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "train"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=SPLIT_FILE)
    parser.add_argument("--check", action="store_true", help="compare with --out; write nothing")
    args = parser.parse_args(argv)
    text = split_text(choose_test(train_rows(args.data)))
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        print(f"{args.out}: {'matches the recipe' if same else 'DIFFERS from the recipe'}")
        return 0 if same else 1
    if args.out.exists():
        print(f"{args.out} exists and is frozen: not rewritten (use --check)", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}: {text.count(chr(10)) - 2} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

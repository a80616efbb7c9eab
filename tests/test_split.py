"""The frozen DSB2018 test split (issue 17): it parses, it is disjoint from the
images models train and are validated on, it holds every kind, and the training
and tuning scripts leave it out."""

import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import train_bundled  # noqa: E402
import tune_postprocess  # noqa: E402
from make_test_split import (  # noqa: E402
    COLUMNS,
    KINDS,
    SPLIT_FILE,
    choose_test,
    kind_of,
    read_split,
    split_text,
    train_rows,
)
from train_bundled import DATA, held_out_ids, load_split, manifest_rows  # noqa: E402

needs_data = pytest.mark.skipif(
    not (DATA / "manifest.csv").exists(), reason=f"the shared data is not at {DATA}"
)


def test_split_file_is_frozen_sorted_and_parses():
    assert SPLIT_FILE.read_text().startswith("# FROZEN test split")
    rows = read_split(SPLIT_FILE)
    assert tuple(rows[0]) == COLUMNS
    ids = [row["id"] for row in rows]
    assert ids == sorted(set(ids))
    assert 0.13 * 533 < len(rows) < 0.17 * 533
    assert {row["kind"] for row in rows} <= set(KINDS)
    for row in rows:
        assert len(row["id"]) == 64 and int(row["height"]) > 0 and int(row["n_instances"]) >= 0


def test_every_listed_stratum_has_a_test_image():
    kinds = Counter(row["kind"] for row in read_split(SPLIT_FILE))
    for kind in ("tissue", "brightfield", "colour", "screen-520x696", "crop-256x256"):
        assert kinds[kind] >= 1, kind
    assert kinds["brightfield"] >= 2  # of 13


@needs_data
def test_test_images_are_shared_train_images_as_listed():
    with open(DATA / "manifest.csv") as f:
        manifest = {row["id"]: row for row in csv.DictReader(f)}
    for row in read_split(SPLIT_FILE):
        source = manifest[row["id"]]
        assert source["split"] == "train"
        assert row["kind"] == kind_of(source)
        for column in ("height", "width", "n_instances"):
            assert row[column] == source[column]


@needs_data
def test_the_committed_file_is_what_the_recipe_gives():
    assert split_text(choose_test(train_rows(DATA))) == SPLIT_FILE.read_text()


@needs_data
def test_every_kind_of_two_or_more_train_images_is_in_test():
    train = Counter(kind_of(row) for row in train_rows(DATA))
    test = Counter(row["kind"] for row in read_split(SPLIT_FILE))
    for kind, n in train.items():
        if n >= 2:
            assert 1 <= test[kind] < n, kind


@needs_data
def test_training_val_and_test_images_are_disjoint():
    test = {row["id"] for row in read_split(SPLIT_FILE)}
    training = {row["id"] for row in manifest_rows(DATA, "train", held_out_ids(SPLIT_FILE))}
    val = {row["id"] for row in manifest_rows(DATA, "val")}
    assert not training & test and not training & val and not val & test
    assert training | test == {row["id"] for row in train_rows(DATA)}
    assert len(training) == 533 - len(test) and len(val) == 69


def make_data(folder: Path, n_train=5, n_val=2) -> Path:
    """A tiny dataset laid out like the shared one, and a split file holding
    out train images t1 and t3."""
    rows = [("t", "train", i) for i in range(n_train)] + [("v", "val", i) for i in range(n_val)]
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "split", "height", "width", "gray_rgb", "n_instances"])
        for prefix, split, i in rows:
            writer.writerow([f"{prefix}{i}", split, 32, 32, True, 1])
            for sub in ("images", "masks"):
                (folder / split / sub).mkdir(parents=True, exist_ok=True)
            labels = np.zeros((32, 32), np.uint16)
            labels[8:16, 8:16] = 1
            image = np.repeat((labels[..., None] * 200 + 20).astype(np.uint8), 3, axis=-1)
            tifffile.imwrite(folder / split / "images" / f"{prefix}{i}.tif", image)
            tifffile.imwrite(folder / split / "masks" / f"{prefix}{i}.tif", labels)
    split_file = folder / "held-out.csv"
    split_file.write_text("# frozen\nid,kind,height,width,n_instances\nt1,rare,32,32,1\n")
    with open(split_file, "a") as f:
        f.write("t3,rare,32,32,1\n")
    return split_file


def test_load_split_leaves_the_held_out_images_out(tmp_path):
    split_file = make_data(tmp_path)
    assert held_out_ids(split_file) == {"t1", "t3"}
    train = load_split(tmp_path, "train", exclude=held_out_ids(split_file))
    assert [s.name for s in train] == ["t0", "t2", "t4"]
    assert [s.name for s in load_split(tmp_path, "train", limit=2, exclude={"t0"})] == ["t1", "t2"]
    assert [s.name for s in load_split(tmp_path, "val")] == ["v0", "v1"]
    assert held_out_ids(None) == frozenset()
    with pytest.raises(SystemExit, match="no such split file"):
        held_out_ids(tmp_path / "missing.csv")


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "flags, expected",
    [([], "frozen"), (["--include-test"], set()), (["--exclude-split", "OTHER"], {"t1", "t3"})],
)
def test_train_bundled_holds_out_the_frozen_split_by_default(
    tmp_path, monkeypatch, flags, expected
):
    other = make_data(tmp_path)
    seen = []

    def fake_load_split(data, split, limit=None, exclude=frozenset()):
        seen.append((split, set(exclude)))
        raise _Stop

    monkeypatch.setattr(train_bundled, "load_split", fake_load_split)
    flags = [str(other) if flag == "OTHER" else flag for flag in flags]
    with pytest.raises(_Stop):
        train_bundled.main(["unet", "--run-dir", str(tmp_path / "run"), "--device", "cpu", *flags])
    frozen = {row["id"] for row in read_split(SPLIT_FILE)}
    assert seen == [("train", frozen if expected == "frozen" else expected)]


def test_tune_postprocess_never_tunes_on_held_out_images(tmp_path, monkeypatch, tiny_unet_path):
    split_file = make_data(tmp_path)
    tuned_on = []

    def fake_sweep(model, samples):
        tuned_on.extend(s.name for s in samples)
        return {(0.5, 8): (0.0, 0.0)}

    monkeypatch.setattr(tune_postprocess, "sweep_postprocess", fake_sweep)
    argv = [str(tiny_unet_path), "--data", str(tmp_path), "--images", "3"]
    tune_postprocess.main([*argv, "--exclude-split", str(split_file)])
    assert sorted(tuned_on) == ["t0", "t2", "t4"]


def test_a_run_that_started_from_weights_that_saw_the_test_split_is_not_honest(tmp_path):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from accuracy_and_speed import test_exposure

    from napari_instseg.core.models import checkpoint

    weights = {"w": torch.zeros(1)}
    held_out = "81 images of dsb2018-test.csv"

    def saved(name, training):
        return checkpoint.save_checkpoint(tmp_path / name, weights, {"training": training})

    seen = saved("seen.safetensors", {"train_image_count": 533})
    honest = saved("honest.safetensors", {"held_out": held_out})
    assert test_exposure({"held_out": held_out}).startswith("held out")
    assert test_exposure({"held_out": "none (--include-test)"}).startswith("NOT held out")
    assert test_exposure({"held_out": held_out, "init": str(honest)}).startswith("held out")
    continued = test_exposure({"held_out": held_out, "init": str(seen)})
    assert continued.startswith("NOT held out") and str(seen) in continued
    twice = saved("twice.safetensors", {"held_out": held_out, "init": str(seen)})
    assert test_exposure({"held_out": held_out, "init": str(twice)}).startswith("NOT held out")
    missing = test_exposure({"held_out": held_out, "init": str(tmp_path / "gone.safetensors")})
    assert "not here to check" in missing

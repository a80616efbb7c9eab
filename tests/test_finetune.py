"""Fine-tuning and training from the user's annotations (CLI and core)."""

import numpy as np
import pytest
import tifffile

from conftest import disc_image
from napari_instseg import load_model, segment_instances, segment_semantic
from napari_instseg.cli import main
from napari_instseg.core.models import checkpoint
from napari_instseg.core.training import finetune


@pytest.fixture
def annotated_folders(tmp_path):
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(4):
        centres = [tuple(rng.integers(10, 54, 2)) for _ in range(5)]
        image, labels = disc_image((64, 64), centres, 5)
        tifffile.imwrite(images / f"s{i}.tif", (image * 200 + 10).astype(np.uint8))
        tifffile.imwrite(masks / f"s{i}_labels.tif", labels.astype(np.uint16))
    return images, masks


def test_cli_fine_tunes_a_unet_and_the_result_predicts(
    annotated_folders, tiny_unet_path, tmp_path, capsys
):
    images, masks = annotated_folders
    out = tmp_path / "mine.safetensors"
    code = main(
        [
            "train",
            "--model",
            str(tiny_unet_path),
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--epochs",
            "4",
            "-o",
            str(out),
            "-q",
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    loaded = load_model(out, "cpu")
    assert loaded.info.name == "mine" and loaded.info.training["base_model"]
    assert len(loaded.info.training["val_images"]) == 1
    assert {"seed_threshold", "min_size"} <= loaded.info.postprocess.keys()  # re-tuned
    assert "validation share" in loaded.info.postprocess["tuned_on"]
    assert segment_semantic(np.random.rand(40, 40), out).classes.shape == (40, 40)
    assert "saved" in capsys.readouterr().out
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert header.startswith("iteration,loss")


def test_cli_trains_a_new_multiclass_maskrcnn(annotated_folders, tmp_path):
    images, masks = annotated_folders
    for i in range(4):  # label 1 is "round", the rest "other"
        labels = tifffile.imread(masks / f"s{i}_labels.tif")
        rows = ["label_id,class_name"] + [
            f"{k},{'round' if k == 1 else 'other'}" for k in np.unique(labels)[1:]
        ]
        (masks / f"s{i}_classes.csv").write_text("\n".join(rows))
    out = tmp_path / "det.safetensors"
    code = main(
        [
            "train",
            "--arch",
            "maskrcnn",
            "--classes",
            "round,other",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--epochs",
            "1",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    model = load_model(out, "cpu")
    assert model.info.class_names == ["background", "round", "other"]
    result = segment_instances(np.random.rand(64, 64), model, score_threshold=0.0)
    assert result.labels.shape == (64, 64)


def test_unknown_class_in_csv_is_a_clear_error(annotated_folders, tmp_path, capsys):
    images, masks = annotated_folders
    (masks / "s0_classes.csv").write_text("label_id,class_name\n1,banana\n")
    code = main(
        [
            "train",
            "--arch",
            "maskrcnn",
            "--classes",
            "round",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--epochs",
            "1",
            "-o",
            str(tmp_path / "x.safetensors"),
        ]
    )
    assert code == 1
    assert "banana" in capsys.readouterr().err


def test_semantic_training_on_class_maps_with_ignore_value(tmp_path):
    images, masks = tmp_path / "i", tmp_path / "m"
    images.mkdir()
    masks.mkdir()
    for i in range(3):
        image, labels = disc_image((48, 48), [(15, 15), (32, 32)], 6)
        classes = np.where(labels == 1, 1, np.where(labels == 2, 2, 0)).astype(np.uint8)
        classes[:4] = 255  # not annotated
        tifffile.imwrite(images / f"c{i}.tif", (image * 255).astype(np.uint8))
        tifffile.imwrite(masks / f"c{i}.tif", classes)
    out = tmp_path / "sem.safetensors"
    code = main(
        [
            "train",
            "--arch",
            "unet",
            "--classes",
            "left,right",
            "--semantic",
            "--ignore-value",
            "255",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--epochs",
            "2",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    info = load_model(out, "cpu").info
    assert info.class_names == ["background", "left", "right"]
    assert "mean_iou" in info.training["validation"]


def test_time_budget_stops_cleanly_and_keeps_the_best(annotated_folders, tiny_unet_path, tmp_path):
    images, masks = annotated_folders
    info = load_model(tiny_unet_path, "cpu").info
    train = finetune.load_annotated_folder(images, masks, info)
    job = finetune.prepare(
        train, model=tiny_unet_path, max_minutes=0.05, device="cpu", run_dir=tmp_path / "run"
    )
    from napari_instseg.core.draining import drain

    drain(job.trainer.run())
    assert job.trainer.state.seconds < 30
    assert (tmp_path / "run" / "best.safetensors").exists()
    path = job.save(tmp_path / "best.safetensors")
    assert checkpoint.read_metadata(path)["training"]["val_images"]


def test_one_tiny_image_still_trains_with_a_warning(tiny_unet_path):
    info = load_model(tiny_unet_path, "cpu").info
    image, labels = disc_image((40, 40), [(20, 20)], 5)
    sample = finetune.annotated("one", image, labels, info, annotated_region_only=True)
    job = finetune.prepare([sample], model=tiny_unet_path, epochs=2, device="cpu")
    assert any("one image" in w for w in job.warnings)
    assert any("annotated objects" in w for w in job.warnings)
    from napari_instseg.core.draining import drain

    assert drain(job.trainer.run()).iteration >= 1


def test_two_reviewed_images_each_give_a_validation_strip():
    """With few images, whole-image hold-out would train on half of two: each
    image keeps its first four fifths for training and gives the rest."""
    from napari_instseg.core.training.samples import AnnotatedImage

    rng = np.random.default_rng(1)
    samples = []
    for name in ("a", "b"):
        centres = [tuple(rng.integers(8, [112, 292])) for _ in range(40)]
        image, labels = disc_image((120, 300), centres, 5)
        samples.append(AnnotatedImage.create(name, image, labels, {"low": 0.0, "high": 100.0}))
    train, val, warning = finetune._split(samples, None, 0.2, seed=0)
    assert warning is None and [s.name for s in train] == ["a", "b"]
    assert [s.labels.shape for s in train] == [(120, 240)] * 2
    assert [s.labels.shape for s in val] == [(120, 60)] * 2 and all(s.object_count for s in val)
    for whole, kept, strip in zip(samples, train, val):
        assert (np.concatenate([kept.image, strip.image], axis=1) == whole.image).all()
        assert (np.concatenate([kept.labels, strip.labels], axis=1) == whole.labels).all()
    # enough images: whole ones are held out
    train, val, _ = finetune._split(samples * 2, None, 0.2, seed=0)
    assert len(train) == 3 and len(val) == 1 and val[0].labels.shape == (120, 300)


def test_fine_tuning_does_not_modify_the_base_model(tiny_unet_path, annotated_folders):
    images, masks = annotated_folders
    base = load_model(tiny_unet_path, "cpu")
    before = {k: v.clone() for k, v in base.module.state_dict().items()}
    train = finetune.load_annotated_folder(images, masks, base.info)
    job = finetune.prepare(train, model=base, epochs=2, device="cpu")
    from napari_instseg.core.draining import drain

    drain(job.trainer.run())
    after = base.module.state_dict()
    assert all((before[k] == after[k]).all() for k in before)


def test_high_validation_fraction_keeps_a_training_image(annotated_folders, tiny_unet_path):
    images, masks = annotated_folders
    info = load_model(tiny_unet_path, "cpu").info
    train = finetune.load_annotated_folder(images, masks, info)
    job = finetune.prepare(
        train,
        model=tiny_unet_path,
        val_fraction=0.95,
        epochs=1,
        device="cpu",
        measure_baseline=False,
    )
    assert len(job.trainer.train_samples) == 1 and len(job.trainer.val_samples) == 3


def test_class_map_values_beyond_the_classes_are_refused(tiny_unet_path):
    from napari_instseg.core.types import InputError

    info = load_model(tiny_unet_path, "cpu").info  # 3 classes
    with pytest.raises(InputError, match="class map values must be 0..2"):
        finetune.annotated("x", np.zeros((20, 20)), np.full((20, 20), 7), info, semantic=True)


def test_validation_ignores_objects_in_unannotated_pixels(oracle_unet):
    from napari_instseg.core.training.samples import AnnotatedImage
    from napari_instseg.core.training.validation import validate

    image, labels = disc_image((64, 64), [(16, 16), (45, 45)], 6)
    annotation = labels.copy()
    annotation[35:, 35:] = 99  # the second object's area was not annotated
    sample = AnnotatedImage.create(
        "s",
        np.repeat(image[..., None], 3, -1),
        annotation,
        {"low": 0.0, "high": 100.0},
        ignore_value=99,
    )
    assert validate(oracle_unet, [sample])["ap50"] == 1.0


def test_fine_tuning_never_returns_a_model_worse_than_the_base(
    annotated_folders, tmp_path, tiny_unet_path
):
    images, masks = annotated_folders
    base = load_model(tiny_unet_path, "cpu")
    train = finetune.load_annotated_folder(images, masks, base.info)
    job = finetune.prepare(train, model=base, epochs=3, device="cpu", learning_rate=50.0)
    from napari_instseg.core.draining import drain

    drain(job.trainer.run())  # a learning rate this high wrecks the weights
    saved = load_model(job.save(tmp_path / "out.safetensors"), "cpu")
    assert job.trainer.state.best_score >= job.baseline["score"]
    if job.trainer.state.best_iteration == 0:  # nothing beat the base model: it is kept
        for key, value in base.module.state_dict().items():
            assert (saved.module.state_dict()[key] == value).all()


def test_fine_tuning_keeps_batchnorm_statistics(annotated_folders, tiny_unet_path):
    images, masks = annotated_folders
    base = load_model(tiny_unet_path, "cpu")
    train = finetune.load_annotated_folder(images, masks, base.info)
    job = finetune.prepare(train[:2], model=base, epochs=2, device="cpu")
    from napari_instseg.core.draining import drain

    before = {
        k: v.clone()
        for k, v in job.trainer.loaded.module.state_dict().items()
        if "running_mean" in k
    }
    drain(job.trainer.run())
    after = job.trainer.loaded.module.state_dict()
    assert before and all((after[k] == v).all() for k, v in before.items())


def test_training_finds_the_channel_axis_from_the_mask():
    from napari_instseg.core.engine.reading import channel_axis_beside
    from napari_instseg.core.types import InputError

    assert channel_axis_beside((3, 40, 50), (40, 50)) == 0  # a (C, H, W) TIFF
    assert channel_axis_beside((40, 50, 3), (40, 50)) == 2
    assert channel_axis_beside((40, 50, 5), (40, 50)) == 2
    assert channel_axis_beside((40, 50), (40, 50)) is None
    with pytest.raises(InputError, match="does not fit a mask"):
        channel_axis_beside((3, 41, 50), (40, 50))


def test_training_at_the_models_object_size_and_predicting_alike(annotated_folders, tmp_path):
    """The image series fine-tunes on images rescaled so that their objects
    have the model's trained size; the new model brings new images to that
    size itself (its ``images_diameter``), and block-wise runs refuse it."""
    from conftest import tiny_unet_info
    from napari_instseg.core.blockwise.blocks import segment_blockwise
    from napari_instseg.core.draining import drain
    from napari_instseg.core.engine.diameter import typical_diameter
    from napari_instseg.core.models.loaded import build_model
    from napari_instseg.core.types import InputError

    info = tiny_unet_info()
    base = tmp_path / "trained-at-20px.safetensors"
    metadata = {**info.to_metadata(), "object_diameter": 20.0}
    checkpoint.save_checkpoint(base, build_model(info).state_dict(), metadata)
    images, masks = annotated_folders  # discs of radius 5: about 11 px across
    train = finetune.load_annotated_folder(images, masks, load_model(base, "cpu").info)
    own = np.median([typical_diameter(s.labels) for s in train])

    job = finetune.prepare(
        train, model=base, epochs=1, device="cpu", measure_baseline=False, at_model_size=True
    )
    for sample in job.trainer.train_samples + job.trainer.val_samples:
        assert typical_diameter(sample.labels) == pytest.approx(20.0, rel=0.1)
        assert sample.image.shape[:2] == sample.labels.shape
        assert sample.labels.shape[0] == pytest.approx(64 * 20.0 / own, abs=3)
    assert "rescaled" in job.notes[0] and "20.0 px" in job.notes[0]
    drain(job.trainer.run())
    saved = job.save(tmp_path / "mine.safetensors")
    tuned = load_model(saved, "cpu").info
    assert tuned.images_diameter == pytest.approx(own, abs=0.2)
    assert tuned.object_diameter == pytest.approx(20.0, rel=0.1)

    image = tifffile.imread(images / "s0.tif")
    sizing = segment_semantic(image, saved).instances.metadata
    assert sizing["diameter"] == tuned.images_diameter  # rescaled by default
    assert sizing["rescale"] == pytest.approx(tuned.object_diameter / own, rel=0.01)
    given = segment_semantic(image, saved, rescale=1.5).instances.metadata
    assert given["rescale"] == 1.5  # what the user asks for wins
    with pytest.raises(InputError, match="block-wise runs segment at the image's own scale"):
        segment_blockwise(image, saved, block_size=64)

    native = finetune.prepare(train, model=saved, epochs=1, device="cpu", measure_baseline=False)
    assert native.images_diameter is None and not native.notes
    assert all(s.labels.shape == (64, 64) for s in native.trainer.train_samples)

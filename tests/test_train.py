"""Training loops on tiny data: they learn, checkpoint, resume and cancel."""

import numpy as np
import pytest
import torch

from conftest import disc_image, disc_samples, tiny_maskrcnn_info, tiny_unet_info
from napari_instseg import load_model
from napari_instseg.core.draining import drain
from napari_instseg.core.models.loaded import LoadedModel, build_model
from napari_instseg.core.training.augmentation import (
    AugmentConfig,
    _lost_detail,
    _zoomed,
    augmented_crop,
)
from napari_instseg.core.training.batches import (
    compact_target,
    maskrcnn_batch,
    packed_targets,
    unet_batch,
    unpacked_targets,
)
from napari_instseg.core.training.config import TrainConfig
from napari_instseg.core.training.recipes import MaskRCNNTrainer, UNetTrainer
from napari_instseg.core.training.samples import AnnotatedImage, touching_zone, unet_targets
from napari_instseg.core.training.validation import validate
from napari_instseg.core.types import Cancelled


def _config(iterations):
    config = TrainConfig(
        iterations=iterations, batch_size=2, val_every=2, warmup_iterations=1, checkpoint_every=1
    )
    config.augment.crop_size = 48
    return config


def test_unet_targets_mark_boundaries_between_touching_objects():
    labels = np.zeros((10, 12), np.int32)
    labels[2:8, 1:6] = 1
    labels[2:8, 6:11] = 2
    classes = unet_targets(labels)
    assert classes[0].max() == 0
    assert (classes[4, 5:7] == 2).all() and classes[4, 3] == 1


def test_touching_zone_covers_where_two_objects_meet_and_nothing_around_a_lone_one():
    labels = np.zeros((12, 24), np.int32)
    labels[2:9, 1:6] = 1
    labels[2:9, 6:11] = 2  # touches 1 along x = 5|6
    labels[2:9, 16:22] = 3  # alone
    zone = touching_zone(labels)
    assert zone[5, 4:8].all()  # both rims where 1 and 2 meet
    assert not zone[5, 1:3].any() and not zone[5, 9:11].any()  # their far sides
    assert not zone[:, 13:].any()  # nothing around the lone object
    assert not touching_zone(np.zeros((8, 8), np.uint16)).any()


def _touching_pair_sample():
    """A 48 x 48 image of two squares that touch, and nothing else."""
    labels = np.zeros((48, 48), np.int32)
    labels[14:34, 8:24], labels[14:34, 24:40] = 1, 2
    image = np.repeat(np.where(labels > 0, 200, 20)[..., None], 3, -1).astype(np.uint8)
    return AnnotatedImage.create("pair", image, labels, {"low": 1.0, "high": 99.8})


def test_touching_weight_weighs_the_loss_there_and_equals_the_plain_loss_at_one(tmp_path):
    info = tiny_unet_info()
    torch.manual_seed(0)
    loaded = LoadedModel(build_model(info), info, torch.device("cpu"))
    samples = [_touching_pair_sample()]
    config, weighted_config = _config(2), _config(2)
    weighted_config.touching_weight = 5.0
    rng = np.random.default_rng
    images, classes = unet_batch(samples, config, rng(1))
    same_images, (same_classes, weights) = unet_batch(samples, weighted_config, rng(1))
    assert torch.equal(images, same_images) and torch.equal(classes, same_classes)
    # the same crops; 5 where the squares meet (whatever flips the crops had), 1 elsewhere
    assert set(torch.unique(weights).tolist()) == {1.0, 5.0}
    assert 0 < (weights == 5).float().mean() < 0.1
    trainer = UNetTrainer(loaded, samples, [], config, tmp_path)
    with torch.no_grad():
        plain = trainer.loss(images, classes)
        ones = trainer.loss(images, (classes, torch.ones_like(weights)))
        heavier = trainer.loss(images, (classes, weights))
    torch.testing.assert_close(ones, plain)
    assert not torch.isclose(heavier, plain)
    weighted = UNetTrainer(loaded, samples, [], weighted_config, tmp_path / "w")
    assert drain(weighted.run()).iteration == 2


def test_lost_detail_augmentation_blurs_edges_but_keeps_labels_and_the_default_stream():
    sample = disc_samples(1)[0]
    plain = AugmentConfig(crop_size=64, scale_range=(1, 1), blur_probability=0, noise_probability=0)
    image, _ = augmented_crop(sample, plain, np.random.default_rng(3))
    # lowres_probability 0 draws nothing: the same crop as before the option existed
    again, _ = augmented_crop(sample, AugmentConfig(**plain.__dict__), np.random.default_rng(3))
    np.testing.assert_array_equal(image, again)

    def lowres(factor):
        config = AugmentConfig(**{**plain.__dict__, "lowres_probability": 1.0})
        config.lowres_factor = (factor, factor)
        return augmented_crop(sample, config, np.random.default_rng(3))

    sharp, sharp_labels = lowres(1.0)  # shrinking 1x changes nothing
    blurred, blurred_labels = lowres(2.0)
    assert blurred.shape == sharp.shape
    np.testing.assert_array_equal(blurred_labels, sharp_labels)
    edge_strength = lambda x: np.abs(np.diff(x[0], axis=1)).max()  # noqa: E731
    assert edge_strength(blurred) < 0.8 * edge_strength(sharp)
    assert abs(blurred.mean() - sharp.mean()) < 0.05


@pytest.mark.parametrize("window", [9, 171, 256, 366])
def test_crops_are_zoomed_as_scipy_zooms_them(window):
    from scipy import ndimage

    image = np.random.default_rng(window).random((window, window - 3, 3)).astype(np.float32)
    expected = ndimage.zoom(image, (256 / window, 256 / window, 1), order=1)
    zoomed = _zoomed(image, 256 / window)
    assert zoomed.shape == expected.shape and zoomed.dtype == np.float32
    np.testing.assert_allclose(zoomed, expected, atol=1e-4)


@pytest.mark.parametrize("factor", [1.5, 2.0, 2.5])
def test_lost_detail_is_what_scipy_shrinking_and_enlarging_gives(factor):
    from scipy import ndimage

    image = np.random.default_rng(7).random((256, 250, 3)).astype(np.float32)
    sigma = (factor - 1) / 2
    # mode "nearest": scipy's default pads with zeros, which a last sample that
    # rounding puts a hair outside the image picks up (a dark edge column)
    smoothed = ndimage.gaussian_filter(image, (sigma, sigma, 0))
    small = ndimage.zoom(smoothed, (1 / factor,) * 2 + (1,), order=1, mode="nearest")
    back = (image.shape[0] / small.shape[0], image.shape[1] / small.shape[1], 1)
    expected = ndimage.zoom(small, back, order=1, mode="nearest")[:256, :250]
    lost = _lost_detail(image, factor)
    assert lost.shape == image.shape and lost.dtype == np.float32
    np.testing.assert_allclose(lost, expected, atol=1e-4)


def detection_target(labels):
    """torchvision's target of one crop, as the training loop receives it."""
    return unpacked_targets(packed_targets([compact_target(labels)]))[0]


def test_detection_target_drops_slivers():
    labels = np.zeros((20, 20), np.int32)
    labels[2:10, 2:10] = 1
    labels[15, 15] = 2  # one pixel
    target = detection_target(labels)
    assert target["boxes"].tolist() == [[2.0, 2.0, 10.0, 10.0]]
    assert target["masks"].shape == (1, 20, 20)
    empty = detection_target(np.zeros((20, 20), np.int32))  # a crop of background
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 20, 20)


def test_packed_maskrcnn_batches_unpack_to_each_crops_targets():
    config = _config(1)
    config.batch_size, config.augment.crop_size = 3, 64
    images, packed = maskrcnn_batch(disc_samples(), config, np.random.default_rng(0))
    assert images.shape == (3, 3, 64, 64) and len(packed) == 5  # a few tensors travel
    targets = unpacked_targets(packed)
    assert [len(t["boxes"]) for t in targets] == packed["counts"].tolist()
    assert sum(packed["counts"].tolist()) > 3
    for crop_labels, target in zip(packed["instance_labels"], targets, strict=True):
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape[1:] == (64, 64)
        for mask, box in zip(target["masks"].bool(), target["boxes"], strict=True):
            (label_id,) = crop_labels[mask].unique().tolist()  # one whole object per mask
            assert torch.equal(mask, crop_labels == label_id)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_unet_trainer_runs_saves_and_resumes(tmp_path):
    info = tiny_unet_info()
    loaded = LoadedModel(build_model(info), info, torch.device("cpu"))
    samples = disc_samples()
    trainer = UNetTrainer(loaded, samples, samples[:1], _config(2), tmp_path)
    state = drain(trainer.run())
    assert state.iteration == 2 and (tmp_path / "best.safetensors").exists()
    best = load_model(tmp_path / "best.safetensors", "cpu")
    assert best.info.training["iteration"] == 2 and "ap50" in best.info.training["validation"]

    # a run killed after logging iteration 3 but before saving its state there
    with (tmp_path / "log.csv").open("a") as f:
        f.write("3,0.5,0.001,,,,1.0\n")
    fresh = LoadedModel(build_model(info), info, torch.device("cpu"))
    resumed = UNetTrainer(fresh, samples, samples[:1], _config(3), tmp_path)
    assert resumed.resume() and resumed.state.iteration == 2
    assert drain(resumed.run()).iteration == 3
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0] == "iteration,loss,lr,score,ap50,ap75,seconds"
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3"]
    assert log[-1] != "3,0.5,0.001,,,,1.0"  # the redone iteration replaced the orphan


@pytest.mark.parametrize("cpu_bfloat16", [False, True])
def test_unet_loss_goes_down_on_a_learnable_task(tmp_path, monkeypatch, cpu_bfloat16):
    # bfloat16 runs (slowly) on any CPU: pretend this one has native units
    monkeypatch.setattr("napari_instseg.core.training.loop.cpu_has_fast_bfloat16", lambda: True)
    info = tiny_unet_info()
    loaded = LoadedModel(build_model(info), info, torch.device("cpu"))
    config = _config(40)
    config.learning_rate = 1e-2
    config.cpu_bfloat16 = cpu_bfloat16
    trainer = UNetTrainer(loaded, disc_samples(), [], config, tmp_path)
    precisions = []
    loss = trainer.loss

    def recording_loss(inputs, targets):
        precisions.append(torch.is_autocast_enabled("cpu"))
        return loss(inputs, targets)

    trainer.loss = recording_loss
    drain(trainer.run())
    assert set(precisions) == {cpu_bfloat16}
    losses = [float(r.split(",")[1]) for r in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_detectors_train_in_float32_on_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr("napari_instseg.core.training.loop.cpu_has_fast_bfloat16", lambda: True)
    info = tiny_maskrcnn_info(tile_size=64)
    loaded = LoadedModel(build_model(info), info, torch.device("cpu"))
    config = _config(1)
    config.cpu_bfloat16 = True
    trainer = MaskRCNNTrainer(loaded, disc_samples(1), [], config, tmp_path)
    with trainer._autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_maskrcnn_trainer_runs_and_cancels(tmp_path):
    info = tiny_maskrcnn_info(tile_size=64)
    loaded = LoadedModel(build_model(info), info, torch.device("cpu"))
    trainer = MaskRCNNTrainer(loaded, disc_samples(2), disc_samples(1), _config(2), tmp_path)
    assert drain(trainer.run()).iteration == 2
    assert load_model(tmp_path / "best.safetensors", "cpu").info.architecture == "maskrcnn"
    again = MaskRCNNTrainer(loaded, disc_samples(2), [], _config(5), tmp_path / "b")
    with pytest.raises(Cancelled):
        drain(again.run(), cancel=lambda: again.state.iteration >= 1)
    assert again.state.iteration == 1


def test_area_weighting_draws_large_images_more_often():
    from napari_instseg.core.training.batches import sample_indices

    small = AnnotatedImage.create(
        "s", np.zeros((16, 16, 3)), np.zeros((16, 16), int), {"low": 1.0, "high": 99.8}
    )
    large = AnnotatedImage.create(
        "l", np.zeros((64, 64, 3)), np.zeros((64, 64), int), {"low": 1.0, "high": 99.8}
    )
    config = TrainConfig(batch_size=4000, sample_weighting="area")
    drawn = sample_indices([small, large], config, np.random.default_rng(0))
    assert 0.75 < drawn.mean() < 0.85  # sqrt-area weights 4:16 -> 0.8 for the large one
    config.sample_weighting = "uniform"
    assert 0.45 < sample_indices([small, large], config, np.random.default_rng(0)).mean() < 0.55


def test_balanced_weighting_gives_rare_kinds_of_image_a_larger_share():
    from napari_instseg.core.training.batches import sample_indices

    def sample(name, kind):
        labels = np.zeros((32, 32), int)
        labels[8:16, 8:16] = 1
        image = np.full((32, 32, 3), 100, np.uint8)
        image[labels > 0] = 200 if kind == "bright" else 20
        if kind == "colour":
            image[..., 2] = 0
        return AnnotatedImage.create(name, image, labels, {"low": 1.0, "high": 99.8})

    samples = [sample(f"b{i}", "bright") for i in range(16)] + [sample("d", "dark")]
    samples += [sample(f"c{i}", "colour") for i in range(4)]
    assert [s.kind for s in samples[15:18]] == [
        "gray, bright objects",
        "gray, dark objects",
        "colour",
    ]
    config = TrainConfig(batch_size=20000, sample_weighting="balanced")
    drawn = np.bincount(sample_indices(samples, config, np.random.default_rng(0)), minlength=21)
    shares = np.array([drawn[:16].sum(), drawn[16], drawn[17:].sum()]) / config.batch_size
    # kinds weigh 16 : 1 : 4 by area; balanced, sqrt(16) : sqrt(1) : sqrt(4)
    np.testing.assert_allclose(shares, np.array([4, 1, 2]) / 7, atol=0.015)
    assert drawn[:16].min() > 0.8 * drawn[:16].max()  # within a kind, still by area
    config.sample_weighting = "area"
    drawn = sample_indices(samples, config, np.random.default_rng(0))
    assert abs((drawn == 16).mean() - 1 / 21) < 0.01


def test_files_pair_by_stem_with_label_suffixes(tmp_path):
    from napari_instseg.core.io.images import paired_files

    images, masks, predicted = (tmp_path / d for d in ("images", "masks", "pred"))
    for folder, names in (
        (images, ["a.tif", "b.png", "c.tif", "notes.txt"]),
        (masks, ["a_labels.tif", "b_masks.png", "d.tif"]),
        (predicted, ["a.tif", "b_labels.tif"]),
    ):
        folder.mkdir()
        for name in names:
            (folder / name).touch()
    assert [(s, i.name, m.name) for s, i, m in paired_files(images, masks)] == [
        ("a", "a.tif", "a_labels.tif"),
        ("b", "b.png", "b_masks.png"),
    ]
    # two folders of label images (evaluation): suffixes are dropped on both sides
    assert [(s, g.name, p.name) for s, g, p in paired_files(masks, predicted, True)] == [
        ("a", "a_labels.tif", "a.tif"),
        ("b", "b_masks.png", "b_labels.tif"),
    ]


def test_checkpoint_choice_tolerates_validation_noise():
    from types import SimpleNamespace

    from napari_instseg.core.training.loop import Trainer, TrainState

    def chosen(margin, scores, floor=-1.0):
        trainer = SimpleNamespace(
            config=TrainConfig(selection_margin=margin), state=TrainState(floor_score=floor)
        )
        picks = []
        for score in scores:
            picks.append(Trainer._choose(trainer, score))
            if picks[-1]:
                trainer.state.best_score = score
        return picks

    scores = [0.96, 0.89, 0.93, 0.70]
    assert chosen(0.0, scores) == [True, False, False, False]  # plain best
    # within 0.1 of the best seen: the later checkpoint wins; far below: never
    assert chosen(0.1, scores) == [True, True, True, False]
    # the model training started from validated at 0.9: nothing below it replaces it
    assert chosen(0.1, [0.85, 0.92, 0.88, 0.90], floor=0.9) == [False, True, False, True]


def test_validation_margin_counts_objects_not_ignored_pixels():
    from napari_instseg.core.training.finetune import validation_margin

    labels = np.zeros((40, 40), np.int64)
    labels[:10, :10] = np.arange(1, 101).reshape(10, 10)  # 100 objects
    labels[30:, 30:] = 255  # unannotated
    sample = AnnotatedImage.create(
        "s", np.zeros((40, 40, 3)), labels, {"low": 1.0, "high": 99.8}, ignore_value=255
    )
    assert validation_margin([sample]) == pytest.approx(0.1)


def test_unannotated_regions_count_neither_objects_nor_errors():
    labels = np.zeros((40, 40), np.int32)
    labels[2:10, 2:10] = 1
    labels[20:, 20:] = 99  # not annotated
    image = np.zeros((40, 40), np.uint8)
    sample = AnnotatedImage.create("s", image, labels, {"low": 1, "high": 99}, ignore_value=99)
    assert sample.object_count == 1
    pred = np.zeros_like(labels)
    pred[2:10, 2:10] = 1
    pred[25:30, 25:30] = 2  # inside the unannotated region: neither right nor wrong
    pred[12:16, 2:6] = 3  # a false positive
    truth, kept = sample.scoreable(pred)
    assert set(np.unique(truth)) == {0, 1} and set(np.unique(kept)) == {0, 1, 3}


def test_validation_reads_one_channel_samples_as_one_image():
    # (Y, X, 1) is how AnnotatedImage stores gray images: not a stack of Y rows
    info = tiny_unet_info()
    loaded = LoadedModel(build_model(info), info, torch.device("cpu"))
    image, labels = disc_image((64, 64), [(20, 20), (44, 40)], 6)
    sample = AnnotatedImage.create("gray", image, labels, {"low": 1.0, "high": 99.8})
    assert sample.image.shape == (64, 64, 1)
    scores = validate(loaded, [sample])
    assert 0.0 <= scores["ap50"] <= 1.0


def test_data_workers_give_the_same_batches_and_run(tmp_path):
    info = tiny_unet_info()
    losses = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        loaded = LoadedModel(build_model(info), info, torch.device("cpu"))
        config = _config(4)
        config.data_workers = workers
        trainer = UNetTrainer(loaded, disc_samples(), [], config, tmp_path / str(workers))
        first = next(trainer._batches(2))
        direct = trainer.batch_maker()(np.random.default_rng([config.seed, 2]))
        assert all(torch.equal(a, b) for a, b in zip(first, direct))
        assert drain(trainer.run()).iteration == 4
        log = (tmp_path / str(workers) / "log.csv").read_text().splitlines()[1:]
        losses[workers] = [row.split(",")[1] for row in log]
    assert losses[0] == losses[2]


def test_data_workers_stop_with_a_cancelled_run(tmp_path):
    info = tiny_maskrcnn_info(tile_size=64)
    loaded = LoadedModel(build_model(info), info, torch.device("cpu"))
    config = _config(50)
    config.data_workers = 2
    trainer = MaskRCNNTrainer(loaded, disc_samples(2), [], config, tmp_path)
    with pytest.raises(Cancelled):
        drain(trainer.run(), cancel=lambda: trainer.state.iteration >= 2)
    assert trainer.state.iteration == 2

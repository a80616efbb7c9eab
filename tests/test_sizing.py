"""Object size (diameter=) and test-time augmentation (augment=)."""

import dataclasses

import numpy as np
import pytest

from conftest import disc_image
from napari_instseg import load_model, segment_instances, segment_semantic
from napari_instseg.core.engine.diameter import auto_rescale, training_diameter, typical_diameter
from napari_instseg.core.labels.metrics import match_counts
from napari_instseg.core.types import InputError, ModelError
from test_engine import _oracle_detect


def _grid_of_discs(shape, radius, spacing):
    centres = [
        (y, x)
        for y in range(radius + 3, shape[0] - radius - 3, spacing)
        for x in range(radius + 3, shape[1] - radius - 3, spacing)
    ]
    return disc_image(shape, centres, radius)


@pytest.fixture
def sized_oracle(oracle_unet):
    """The oracle U-Net, told that it was trained on objects of 20 px."""
    info = dataclasses.replace(oracle_unet.info, object_diameter=20.0)
    return dataclasses.replace(oracle_unet, info=info)


@pytest.mark.parametrize("radius", [4, 7, 12, 25])
def test_typical_diameter_of_discs_is_within_15_percent(radius):
    _, labels = _grid_of_discs((256, 256), radius, 2 * radius + 8)
    assert abs(typical_diameter(labels) - 2 * radius) <= 0.15 * 2 * radius
    assert training_diameter([labels, labels[:1, :1]]) == pytest.approx(
        typical_diameter(labels), abs=0.05
    )


@pytest.mark.parametrize("radius", [3, 10, 30])
def test_auto_diameter_finds_disc_sizes_and_returns_labels_at_the_input_size(sized_oracle, radius):
    image, truth = _grid_of_discs((250, 230), radius, 2 * radius + 9)
    result = segment_semantic(image, sized_oracle, diameter="auto").instances
    assert result.labels.shape == image.shape
    found = result.metadata["diameter"]
    assert abs(found - 2 * radius) <= 0.15 * 2 * radius
    assert result.metadata["rescale"] == pytest.approx(auto_rescale(found, 20.0), rel=0.02)
    assert match_counts(truth, result.labels, [0.5]).summary()["ap"][0] >= 0.9


@pytest.mark.parametrize(("radius", "scale"), [(30, 20 / 60), (5, 2.0)])
def test_auto_diameter_of_a_model_for_other_images_looks_first_at_their_size(
    sized_oracle, radius, scale
):
    """A model fine-tuned on 60 px objects brought to its 20 px: "auto" looks
    at a third of the size first (one pass when its images are such), and
    still finds other sizes."""
    info = dataclasses.replace(sized_oracle.info, images_diameter=60.0)
    finetuned = dataclasses.replace(sized_oracle, info=info)
    image, truth = _grid_of_discs((250, 230), radius, 2 * radius + 9)
    steps = []
    result = segment_semantic(image, finetuned, diameter="auto", progress=steps.append)
    result = result.instances
    assert abs(result.metadata["diameter"] - 2 * radius) <= 0.2 * 2 * radius
    assert result.metadata["rescale"] == pytest.approx(scale, rel=0.05)
    second_pass = steps[-1].total > steps[0].total  # a second pass adds its tiles
    assert second_pass == (radius != 30)
    assert match_counts(truth, result.labels, [0.5]).summary()["ap"][0] >= 0.9


def test_a_given_diameter_rescales_to_the_trained_size(sized_oracle):
    image, truth = _grid_of_discs((200, 200), 20, 50)
    steps = []
    result = segment_semantic(image, sized_oracle, diameter=40, progress=steps.append)
    assert result.classes.shape == image.shape
    assert result.instances.metadata["rescale"] == pytest.approx(0.5)
    assert match_counts(truth, result.instances.labels, [0.5]).summary()["ap"][0] == 1.0
    assert steps[-1].done == steps[-1].total


def test_auto_predicts_twice_only_outside_the_band(sized_oracle):
    for radius, second_pass in ((10, False), (3, True)):
        image, _ = _grid_of_discs((128, 128), radius, 2 * radius + 9)
        plain, auto = [], []
        segment_semantic(image, sized_oracle, tile_size=128, progress=plain.append)
        segment_semantic(image, sized_oracle, tile_size=128, diameter="auto", progress=auto.append)
        assert len(plain) == 1
        assert (len(auto) > 1) == second_pass
        assert auto[-1].done == auto[-1].total


def test_diameter_errors_are_one_line(sized_oracle, oracle_unet):
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(InputError, match="not both"):
        segment_semantic(image, sized_oracle, diameter=20, rescale=2.0)
    with pytest.raises(InputError, match="not a number of pixels"):
        segment_semantic(image, sized_oracle, diameter="big")
    with pytest.raises(ModelError, match="does not store the object diameter"):
        segment_semantic(image, oracle_unet, diameter="auto")


def test_instances_take_a_diameter_too(tiny_maskrcnn_path):
    base = load_model(tiny_maskrcnn_path, "cpu")
    info = dataclasses.replace(base.info, object_diameter=30.0)
    oracle = dataclasses.replace(base, info=info, tile_predictor=_oracle_detect)
    image, truth = _grid_of_discs((240, 240), 18, 46)
    result = segment_instances(image, oracle, diameter="auto")
    assert result.labels.shape == image.shape
    assert result.metadata["diameter_mode"] == "auto"
    assert abs(result.metadata["diameter"] - 36) <= 0.15 * 36
    assert result.metadata["rescale"] == 1.0  # 36 px lies in the band around 30 px
    assert match_counts(truth, result.labels, [0.5]).summary()["ap"][0] == 1.0


def test_test_time_augmentation_keeps_exact_answers(oracle_unet, tiny_maskrcnn_path):
    # both oracles are exact whatever the orientation, so the 8 views must agree
    image, truth = _grid_of_discs((150, 170), 8, 30)
    plain = segment_semantic(image, oracle_unet, tile_size=64, overlap=16)
    augmented = segment_semantic(image, oracle_unet, tile_size=64, overlap=16, augment=True)
    np.testing.assert_array_equal(plain.classes, augmented.classes)
    np.testing.assert_allclose(plain.probabilities, augmented.probabilities, atol=1e-5)
    oracle = dataclasses.replace(
        load_model(tiny_maskrcnn_path, "cpu"), tile_predictor=_oracle_detect
    )
    plain = segment_instances(image, oracle, tile_size=96, overlap=24)
    augmented = segment_instances(image, oracle, tile_size=96, overlap=24, augment=True)
    assert len(augmented) == len(plain) == truth.max()
    assert match_counts(plain.labels, augmented.labels, [0.9]).summary()["ap"][0] == 1.0
    np.testing.assert_allclose(augmented.scores, 0.9, atol=1e-6)  # all 8 views agree


@pytest.mark.bundled
def test_bundled_models_know_their_trained_diameter():
    # the median nucleus diameter of each model's training images: all 533
    # shared train images for the Mask R-CNN, the 452 outside the test split
    # for the U-Net
    for name, diameter in (("nuclei-unet", 18.2), ("nuclei-maskrcnn", 18.3)):
        assert load_model(name, "cpu").info.object_diameter == pytest.approx(diameter)

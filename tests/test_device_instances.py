"""The U-Net post-processing in torch (for a GPU) gives scipy's labels pixel
for pixel. Run on CPU tensors here; on CUDA too where there is one."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_instseg.core.labels import device_instances, postprocess
from napari_instseg.core.labels.postprocess import boxes_from_labels

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _blobs(shape, seed, density=0.5, smooth=2.0):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), smooth)
    return field > np.quantile(field, 1 - density)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_components_are_numbered_as_scipy_numbers_them(device, seed):
    mask = _blobs((97, 131), seed, density=0.3 + 0.1 * seed, smooth=1.0 + seed)
    expected, _ = ndimage.label(mask)
    got = device_instances.label_components(torch.from_numpy(mask).to(device))
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_a_long_winding_component_is_one(device):
    # a serpentine 1 px path: the worst case for label propagation
    mask = np.zeros((41, 41), bool)
    mask[::4, 1:-1] = True
    for k, row in enumerate(range(0, 37, 4)):
        mask[row : row + 5, 1 if k % 2 else 39] = True
    expected, n = ndimage.label(mask)
    got = device_instances.label_components(torch.from_numpy(mask).to(device))
    assert n == 1
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_full_masks(device):
    for mask in (np.zeros((5, 7), bool), np.ones((5, 7), bool)):
        got = device_instances.label_components(torch.from_numpy(mask).to(device))
        np.testing.assert_array_equal(got.cpu().numpy(), ndimage.label(mask)[0])


def _class_map(seed, shape=(160, 200)):
    """Interior, boundary and background classes with a seed probability,
    shaped like a U-Net's output over touching blobs."""
    rng = np.random.default_rng(seed)
    foreground = _blobs(shape, seed, density=0.45, smooth=3.0)
    distance = ndimage.distance_transform_edt(foreground)
    classes = np.where(foreground, np.where(distance > 1.5, 1, 2), 0).astype(np.uint8)
    probability = np.clip(distance / 4 + rng.normal(0, 0.15, shape), 0, 1)
    return classes, np.round(probability * 255).astype(np.uint8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("use_probability", [True, False])
def test_instances_equal_scipys_pixel_for_pixel(device, seed, use_probability):
    classes, probability = _class_map(seed)
    options = dict(min_size=12, seed_threshold=0.6)
    expected = postprocess.instances_from_classes(
        classes, seed_probability=probability if use_probability else None, **options
    )
    got = device_instances.instances_from_classes(
        torch.from_numpy(classes).to(device),
        seed_probability=torch.from_numpy(probability).to(device) if use_probability else None,
        **options,
    )
    assert expected.max() > 10  # the case has objects, some of them dropped
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_a_model_without_boundary_class(device):
    classes, probability = _class_map(3)
    classes[classes == 2] = 0
    classes[:3, :3] = 255  # would equal -1 after wrapping round in uint8
    options = dict(min_size=5, boundary_class=-1, seed_probability=None)
    expected = postprocess.instances_from_classes(classes, **options)
    got = device_instances.instances_from_classes(torch.from_numpy(classes).to(device), **options)
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_object_statistics_match_the_cpu_table(device):
    classes, probability = _class_map(5)
    labels = postprocess.instances_from_classes(classes, seed_probability=probability)
    ids = np.arange(1, labels.max() + 1)
    boxes, areas, means = device_instances.object_statistics(
        torch.from_numpy(labels).to(device), torch.from_numpy(probability).to(device)
    )
    np.testing.assert_array_equal(boxes, boxes_from_labels(labels, ids))
    np.testing.assert_array_equal(areas, np.bincount(labels.ravel())[1:])
    np.testing.assert_allclose(means, ndimage.mean(probability, labels, ids) / 255, rtol=1e-12)
    empty = device_instances.object_statistics(
        torch.zeros((4, 4), dtype=torch.int32, device=device),
        torch.zeros((4, 4), dtype=torch.uint8, device=device),
    )
    assert [len(a) for a in empty] == [0, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["uint16", "float-with-nan", "rgb", "constant"])
def test_tiles_normalised_on_the_device_equal_those_of_the_host(device, kind):
    from napari_instseg.core.engine.reading import NormalisedSlice, SliceReader, to_tensor
    from napari_instseg.core.models.info import ModelInfo

    rng = np.random.default_rng(1)
    image = {
        "uint16": rng.integers(0, 4000, (70, 90)).astype(np.uint16),
        "float-with-nan": np.where(
            rng.random((70, 90)) < 0.05, np.nan, rng.normal(0, 1e3, (70, 90))
        ),
        "rgb": rng.integers(0, 255, (70, 90, 3)).astype(np.uint8),
        "constant": np.full((70, 90), 7.0),
    }[kind]
    info = ModelInfo("t", "unet", {}, ["background", "nucleus"])
    work = NormalisedSlice(SliceReader(image, (), 2 if image.ndim == 3 else None), info)
    tiles = work.tile_grid(48, 16)
    host = [
        to_tensor(a, torch.device("cpu"), 16) for _, a in work.batches(tiles, torch.device("cpu"))
    ]
    raw = [a for _, a in work.batches(tiles, torch.device("cpu"), normalised=False)]
    for expected, arrays in zip(host, raw, strict=True):
        assert arrays[0].shape[-1] == (3 if kind == "rgb" else 1)  # gray travels as one channel
        got = work.on_device(arrays, torch.device(device))
        np.testing.assert_array_equal(
            got.cpu().numpy(), expected[..., : got.shape[-2], : got.shape[-1]].numpy()
        )


def test_instances_made_on_the_blending_device_equal_the_host_path():
    # the GPU path's code, run on CPU tensors: labels, boxes, areas and scores
    from napari_instseg.core.engine.blending import BandBlender
    from napari_instseg.core.engine.semantic import _instances_on_device, _mean_probabilities
    from napari_instseg.core.engine.tiling import Tile
    from napari_instseg.core.labels.postprocess import instance_result_from_labels

    classes, probability = _class_map(7, shape=(120, 150))
    # the interior channel carries the probability; argmax still gives the classes
    one_hot = np.stack([classes == k for k in range(3)]).astype(np.float32)
    one_hot[1] = np.where(classes == 1, np.maximum(probability / 255.0, 0.01), 0)
    blender = BandBlender((120, 150), 3, 8, 1, torch.device("cpu"), keep_probabilities=False)
    blender.add(Tile(0, 120, 0, 150, (0, 120), (0, 150), 0), torch.from_numpy(one_hot))
    blender.close_rows(120)
    rules = dict(interior_class=1, boundary_class=2, seed_threshold=0.5)
    output = _instances_on_device(blender, 10, rules, measure=True)

    host_classes = blender.classes.numpy()
    host_probability = blender.instance_probability.numpy()
    labels = postprocess.instances_from_classes(
        host_classes, 10, seed_probability=host_probability, **rules
    )
    expected = instance_result_from_labels(
        labels, ["background", "nucleus"], scores=_mean_probabilities(host_probability, labels)
    )
    assert len(expected) > 10
    np.testing.assert_array_equal(output.labels, labels)
    np.testing.assert_array_equal(output.boxes, expected.boxes)
    np.testing.assert_array_equal(output.areas, np.bincount(labels.ravel())[1:])
    np.testing.assert_allclose(output.scores, expected.scores, rtol=1e-6)
    assert output.measured.max() >= output.labels.max()  # measured keeps smaller specks


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
def test_masks_painted_at_once_equal_masks_pasted_one_by_one(device, seed):
    from napari_instseg.core.labels.detections import paint_instances
    from napari_instseg.core.labels.device_painting import paint_on_device

    rng = np.random.default_rng(seed)
    n, shape = 300, (150, 190)
    centres = rng.uniform(-5, [155, 195], (n, 2))  # some boxes leave the image
    radii = rng.gamma(2.0, 4.0, (n, 2)) + 0.3  # tiny to about 60 px wide
    radii[:3] = [[70, 40], [0.2, 0.2], [130, 150]]  # long, sub-pixel and whole-image boxes
    boxes = np.concatenate([centres - radii, centres + radii], 1)
    masks = ndimage.gaussian_filter(rng.random((n, 28, 28)), (0, 2, 2)).astype(np.float32)
    masks = (masks - masks.min()) / (masks.max() - masks.min())
    scores = rng.random(n).astype(np.float32)
    scores[10:20] = scores[9]  # ties keep their order
    classes = rng.integers(1, 3, n)
    arrays = (shape, boxes, scores, classes, masks, ("background", "a", "b"))
    for threshold in (0.4, 0.5):
        expected = paint_instances(*arrays, threshold)
        got = paint_on_device(*arrays, torch.device(device), threshold)
        assert 20 < len(expected) < n  # overlaps dropped some
        np.testing.assert_array_equal(got.labels, expected.labels)
        assert got.labels.dtype == expected.labels.dtype
        np.testing.assert_array_equal(got.boxes, expected.boxes)
        np.testing.assert_array_equal(got.scores, expected.scores)
        np.testing.assert_array_equal(got.class_ids, expected.class_ids)
        np.testing.assert_array_equal(got.areas, np.bincount(expected.labels.ravel())[1:])


def test_painting_nothing():
    from napari_instseg.core.labels.device_painting import paint_on_device

    got = paint_on_device(
        (8, 9),
        np.zeros((0, 4)),
        np.zeros(0),
        np.zeros(0),
        np.zeros((0, 28, 28)),
        ("bg", "a"),
        torch.device("cpu"),
    )
    assert len(got) == 0 and got.labels.shape == (8, 9) and not got.labels.any()

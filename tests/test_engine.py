"""The prediction engine: axes, dtypes, tiling seams, stacks, progress, cancel."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import disc_image
from napari_instseg import detect_instances, load_model, segment_instances, segment_semantic
from napari_instseg.core.labels.detections import paste
from napari_instseg.core.labels.metrics import match_counts
from napari_instseg.core.types import Cancelled, InputError, ModelError


def _centres_on_seams(shape, tile, overlap, radius):
    """Disc centres straddling every seam of the tile grid, plus interior ones."""
    from napari_instseg.core.engine.tiling import ownership_bounds, tile_starts

    seams_y = [
        b for b, _ in ownership_bounds(tile_starts(shape[0], tile, overlap), tile, shape[0])[1:]
    ]
    seams_x = [
        b for b, _ in ownership_bounds(tile_starts(shape[1], tile, overlap), tile, shape[1])[1:]
    ]
    centres = []
    for sy in seams_y:
        for x in range(radius + 2, shape[1] - radius - 2, 3 * radius):
            centres.append((sy + (x % 5) - 2, x))
    for sx in seams_x:
        for y in range(radius + 2 + radius, shape[0] - radius - 2, 3 * radius):
            centres.append((y, sx + (y % 5) - 2))
    # drop discs that would touch each other
    kept = []
    for c in centres:
        if all((c[0] - k[0]) ** 2 + (c[1] - k[1]) ** 2 > (2 * radius + 3) ** 2 for k in kept):
            kept.append(c)
    return kept


def test_semantic_tiled_equals_untiled_exactly(oracle_unet):
    image, truth = disc_image((300, 260), _centres_on_seams((300, 260), 64, 16, 6), 6)
    whole = segment_semantic(image, oracle_unet, tile_size=512)
    tiled = segment_semantic(image, oracle_unet, tile_size=64, overlap=16)
    np.testing.assert_array_equal(whole.classes, tiled.classes)
    np.testing.assert_allclose(whole.probabilities, tiled.probabilities, atol=1e-5)
    assert match_counts(truth, tiled.instances.labels, [0.9]).summary()["ap"][0] == 1.0


def _oracle_detect(module, batch, sizes, score_threshold=0.0):
    """Stands in for Mask R-CNN: every bright connected component in the tile
    (cut by the tile edge or not) becomes a detection with a 28x28 mask, cut
    from the component as torchvision cuts Mask R-CNN's training targets
    (``roi_align(aligned=False)``), which is what the real heads learn."""
    from scipy import ndimage
    from torchvision.ops import roi_align

    detections = []
    for i, (h, w) in enumerate(sizes):
        fg = batch[i, 0, :h, :w].float().cpu().numpy() > 0.5
        comps, n = ndimage.label(fg)
        boxes, masks = [], []
        for k, sl in enumerate(ndimage.find_objects(comps), start=1):
            box = [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop]
            component = torch.from_numpy((comps == k).astype(np.float32))[None, None]
            rois = torch.tensor([[0.0, *box]])
            masks.append(roi_align(component, rois, (28, 28), 1.0, 0, aligned=False))
            boxes.append(box)
        detections.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.full((n,), 0.9),
                "labels": torch.ones(n, dtype=torch.int64),
                "masks": torch.cat(masks) if masks else torch.zeros((0, 1, 28, 28)),
            }
        )
    return detections


def _with_oracle(path):
    """A copy of the (cached) model at ``path``, with the oracle as its detector."""
    return dataclasses.replace(load_model(path, "cpu"), tile_predictor=_oracle_detect)


@pytest.fixture
def oracle_detector(tiny_maskrcnn_path):
    return _with_oracle(tiny_maskrcnn_path)


def test_instances_on_seams_are_neither_cut_nor_duplicated(oracle_detector):
    shape, radius = (1024, 1024), 9
    image, truth = disc_image(shape, _centres_on_seams(shape, 256, 64, radius), radius)
    whole = segment_instances(image, oracle_detector, tile_size=1024)
    tiled = segment_instances(image, oracle_detector, tile_size=256, overlap=64)
    assert len(tiled) == len(whole) == truth.max()
    agreement = match_counts(whole.labels, tiled.labels, [0.5, 0.9]).summary()["ap"]
    assert agreement[0] >= 0.9 and agreement[1] == 1.0
    assert match_counts(truth, tiled.labels, [0.8]).summary()["ap"][0] == 1.0
    # boxes match the painted labels exactly (max exclusive)
    for label_id, (y0, x0, y1, x1) in zip(tiled.label_ids, tiled.boxes):
        ys, xs = np.nonzero(tiled.labels == label_id)
        assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y0, x0, y1, x1)


def test_instance_result_contract(tiny_maskrcnn_path):
    result = segment_instances(
        np.random.rand(96, 80).astype(np.float32),
        tiny_maskrcnn_path,
        device="cpu",
        score_threshold=0.0,
    )
    assert result.labels.shape == (96, 80) and result.labels.dtype == np.uint16
    n = len(result)
    assert result.boxes.shape == (n, 4) and result.scores.shape == (n,)
    assert result.class_ids.shape == (n,) and set(result.class_ids) <= {1}
    assert result.class_names == ["background", "nucleus"]
    assert set(np.unique(result.labels)) - {0} == set(result.label_ids)
    if n:
        assert np.all(np.diff(result.scores) <= 1e-6), "ids are ranked by score"


def test_mask_head_runs_only_on_detections_over_the_threshold(tiny_maskrcnn_path):
    from napari_instseg import load_model

    model = load_model(tiny_maskrcnn_path, "cpu")
    heads = model.predictor.roi_heads
    rois, raw_scores = [], []
    hooks = [
        heads.mask_head.register_forward_hook(lambda m, i, o: rois.append(len(i[0]))),
        heads.register_forward_hook(lambda m, i, o: raw_scores.append(o[0][0]["scores"])),
    ]
    image = np.random.default_rng(1).random((96, 80)).astype(np.float32)
    try:
        segment_instances(image, model, score_threshold=0.0)
        threshold = float(raw_scores[0].median())
        segment_instances(image, model, score_threshold=threshold)
    finally:
        for hook in hooks:
            hook.remove()
    over = int((raw_scores[0] >= threshold).sum())
    assert rois == [len(raw_scores[0]), over] and len(raw_scores[1]) == over
    assert heads.score_thresh == 0.0  # the model's own floor is restored


def test_stacks_keep_leading_axes_and_unique_ids(oracle_unet):
    image, _ = disc_image((64, 70), [(20, 20), (40, 50)], 6)
    stack = np.stack([image, image, np.zeros_like(image)])[None]  # (1, 3, Y, X)
    result = segment_semantic(stack, oracle_unet)
    assert result.classes.shape == (1, 3, 64, 70)
    inst = result.instances
    assert inst.labels.shape == (1, 3, 64, 70)
    assert len(inst) == 4 and list(inst.stack_index) == [0, 0, 1, 1]
    assert len(np.unique(inst.labels)) == 5


def test_rgb_multichannel_and_gray_inputs(tiny_unet_path):
    model = load_model(tiny_unet_path, "cpu")
    for image, kwargs in [
        (np.random.randint(0, 255, (50, 60, 3), np.uint8), {}),
        (np.random.randint(0, 255, (50, 60, 4), np.uint8), {}),
        (np.random.rand(3, 50, 60), {"channel_axis": 0}),
        (np.random.rand(50, 60), {}),
    ]:
        result = segment_semantic(image, model, **kwargs)
        assert result.classes.shape == (50, 60)
    with pytest.raises(InputError, match="channels"):
        segment_semantic(np.random.rand(5, 50, 60), model, channel_axis=0)


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(
            [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, np.bool_]
        ),
        shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
    )
)
def test_any_dtype_and_shape_segments_without_error(tiny_model_for_hypothesis, image):
    result = segment_semantic(image, tiny_model_for_hypothesis)
    assert result.classes.shape == image.shape
    assert result.instances.labels.shape == image.shape


@pytest.fixture(scope="module")
def tiny_model_for_hypothesis(tiny_unet_path):
    return load_model(tiny_unet_path, "cpu")


def test_nan_inf_and_constant_images(oracle_unet):
    image, truth = disc_image((64, 64), [(30, 30)], 8)
    image[:5] = np.nan
    image[5:8] = np.inf
    result = segment_semantic(image, oracle_unet)
    assert len(result.instances) == 1
    assert len(segment_semantic(np.full((40, 40), 7.0), oracle_unet).instances) == 0


def test_progress_is_reported_per_tile_and_cancel_stops(oracle_unet):
    image = np.random.rand(200, 200)
    steps = []
    segment_semantic(image, oracle_unet, tile_size=64, overlap=16, progress=steps.append)
    assert [s.done for s in steps] == list(range(1, len(steps) + 1))
    assert steps[-1].total == len(steps) == 16
    with pytest.raises(Cancelled):
        segment_semantic(
            image,
            oracle_unet,
            tile_size=64,
            overlap=16,
            cancel=lambda: len(steps) > 20,
            progress=steps.append,
        )
    assert len(steps) == 21  # stopped at the first check after cancelling


def test_dask_input_is_read_tile_by_tile(oracle_unet):
    da = pytest.importorskip("dask.array")
    image, _ = disc_image((256, 256), [(100, 100)], 10)
    reads = []

    def read_block(block, block_info=None):
        reads.append(block.shape)
        return block

    lazy = da.from_array(image, chunks=64).map_blocks(read_block, dtype=image.dtype)
    result = segment_semantic(lazy, oracle_unet, tile_size=64, overlap=16)
    np.testing.assert_array_equal(
        result.classes, segment_semantic(image, oracle_unet, tile_size=64, overlap=16).classes
    )
    assert max(np.prod(s) for s in reads) <= 64 * 64


def test_rescale_returns_original_size(oracle_unet):
    image, truth = disc_image((80, 90), [(40, 40)], 12)
    result = segment_semantic(image, oracle_unet, rescale=0.5)
    assert result.classes.shape == (80, 90)
    assert match_counts(truth, result.instances.labels, [0.7]).summary()["ap"][0] == 1.0


def test_more_than_65535_objects_use_uint32():
    from napari_instseg.core.labels.postprocess import instance_result_from_labels

    labels = np.arange(70000, dtype=np.int32).reshape(350, 200) + 1
    result = instance_result_from_labels(labels, ["background", "nucleus"])
    assert result.labels.dtype == np.uint32 and len(result) == 70000


def test_wrong_task_and_unknown_model_are_clear(tiny_unet_path):
    with pytest.raises(ModelError, match="segment_semantic"):
        segment_instances(np.zeros((10, 10)), tiny_unet_path)
    with pytest.raises(ModelError, match="known models: .*nuclei-unet"):
        load_model("no-such-model")
    with pytest.raises(InputError):
        segment_semantic(np.zeros(10), tiny_unet_path)


def test_device_auto_picks_cpu_without_gpu():
    from napari_instseg.core.devices import resolve_device

    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ModelError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny_unet_path):
    image = np.random.rand(300, 300).astype(np.float32)
    cpu = segment_semantic(image, tiny_unet_path, device="cpu", tile_size=128)
    gpu = segment_semantic(image, tiny_unet_path, device="cuda", tile_size=128)
    assert (cpu.classes == gpu.classes).mean() > 0.99


def test_zarr_input_matches_numpy(oracle_unet):
    zarr = pytest.importorskip("zarr")
    image, _ = disc_image((200, 230), [(60, 60), (150, 170)], 12)
    stored = zarr.create_array(store={}, shape=image.shape, chunks=(64, 64), dtype=image.dtype)
    stored[:] = image
    lazy = segment_semantic(stored, oracle_unet, tile_size=64, overlap=16)
    eager = segment_semantic(image, oracle_unet, tile_size=64, overlap=16)
    np.testing.assert_array_equal(lazy.instances.labels, eager.instances.labels)


def test_rescaled_instances_keep_tables_aligned_when_slivers_vanish(oracle_detector):
    image, _ = disc_image((60, 60), [(20, 20), (40, 42)], 6)
    image[50, 5:40] = 1.0  # a 1 px line: may vanish when labels shrink back
    result = segment_instances(image, oracle_detector, rescale=2.0)
    ids = np.unique(result.labels)[1:]
    assert list(ids) == list(result.label_ids) == list(range(1, len(result) + 1))
    assert len(result.scores) == len(result.class_ids) == len(result.boxes) == len(result)


def test_score_threshold_defaults_to_the_models_own(tiny_maskrcnn_path, tmp_path):
    from napari_instseg.core.models import checkpoint

    state, metadata = checkpoint.load_checkpoint(tiny_maskrcnn_path)
    metadata.pop("format_version")
    image = np.random.default_rng(2).random((96, 80)).astype(np.float32)
    scores = segment_instances(image, tiny_maskrcnn_path, score_threshold=0.0).scores
    threshold = float(np.median(scores)) if len(scores) else 0.5
    metadata["postprocess"] = {"score_threshold": threshold}
    tuned = checkpoint.save_checkpoint(tmp_path / "tuned.safetensors", state, metadata)
    default = segment_instances(image, tuned)
    explicit = segment_instances(image, tiny_maskrcnn_path, score_threshold=threshold)
    np.testing.assert_array_equal(default.labels, explicit.labels)
    assert np.all(default.scores >= threshold)


def test_cpu_bfloat16_can_be_switched_off(monkeypatch):
    from contextlib import nullcontext

    from napari_instseg.core import devices

    monkeypatch.setenv("NAPARI_INSTSEG_CPU_BFLOAT16", "0")
    devices.cpu_has_fast_bfloat16.cache_clear()
    try:
        assert not devices.cpu_has_fast_bfloat16()
        assert isinstance(devices.autocast_for(torch.device("cpu")), nullcontext)
    finally:
        monkeypatch.delenv("NAPARI_INSTSEG_CPU_BFLOAT16")
        devices.cpu_has_fast_bfloat16.cache_clear()


def test_bfloat16_and_float32_agree(tiny_unet_path, monkeypatch):
    from napari_instseg import load_model
    from napari_instseg.core import devices

    image, _ = disc_image((96, 96), [(30, 30), (60, 64)], 9)
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("NAPARI_INSTSEG_CPU_BFLOAT16", setting)
        devices.cpu_has_fast_bfloat16.cache_clear()
        results[setting] = segment_semantic(image, load_model(tiny_unet_path, "cpu"))
    devices.cpu_has_fast_bfloat16.cache_clear()
    reduced, full = results["1"], results["0"]
    assert np.mean(reduced.classes == full.classes) > 0.98
    np.testing.assert_allclose(reduced.probabilities, full.probabilities, atol=0.05)


def test_masks_are_pasted_where_their_fractional_box_lies():
    # left half of the heads' 28x28 mask is on; the box spans x 10.3..20.3, y 4.6..14.6.
    # Masks are trained on roi_align(aligned=False) crops, which read pixel j at
    # coordinate j: pixels 11..15 lie in the box's left half, 10 before the box.
    mask = np.zeros((28, 28), np.float32)
    mask[:, :14] = 1
    labels = np.zeros((40, 40), np.int32)
    painted = paste(labels, mask, np.array([4.6, 10.3, 14.6, 20.3]), 7)  # y_min, x_min, ...
    assert np.flatnonzero(labels[10] == 7).tolist() == [11, 12, 13, 14, 15]
    assert np.flatnonzero(labels[:, 12] == 7).tolist() == list(range(5, 15))
    assert painted == 50


def test_pasting_clips_boxes_at_the_image_edge():
    labels = np.zeros((20, 20), np.int32)
    box = np.array([15.2, -3.5, 24, 4.5])  # y_min, x_min, y_max, x_max
    painted = paste(labels, np.ones((28, 28), np.float32), box, 1)
    expected = np.zeros_like(labels)
    expected[16:, :5] = 1
    np.testing.assert_array_equal(labels, expected)
    assert painted == expected.sum()


def test_mask_threshold_defaults_to_the_models_own(oracle_detector, tiny_maskrcnn_path, tmp_path):
    from napari_instseg.core.models import checkpoint

    state, metadata = checkpoint.load_checkpoint(tiny_maskrcnn_path)
    metadata.pop("format_version")
    metadata["postprocess"] = {"mask_threshold": 0.9}
    tuned = _with_oracle(
        checkpoint.save_checkpoint(tmp_path / "tuned.safetensors", state, metadata)
    )
    image, truth = disc_image((96, 96), [(30, 30), (60, 65)], 9)
    default = segment_instances(image, tuned)
    explicit = segment_instances(image, tuned, mask_threshold=0.9)
    loose = segment_instances(image, tuned, mask_threshold=0.1)
    np.testing.assert_array_equal(default.labels, explicit.labels)
    # the oracle's masks fade at their edges: a higher threshold paints less
    assert len(default) == len(loose) == 2
    assert (default.labels > 0).sum() < (truth > 0).sum() < (loose.labels > 0).sum()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"score_threshold": 1.5}, "score threshold 1.5 must be between 0 and 1"),
        ({"score_threshold": -0.1}, "score threshold -0.1 must be between 0 and 1"),
        ({"mask_threshold": 0.0}, "mask threshold 0.0 must be above 0 and below 1"),
        ({"mask_threshold": 1.0}, "mask threshold 1.0 must be above 0 and below 1"),
    ],
)
def test_detection_thresholds_out_of_range_are_clear_errors(tiny_maskrcnn_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        segment_instances(np.random.rand(64, 64), tiny_maskrcnn_path, **kwargs)


def test_detections_painted_at_any_mask_threshold_equal_segmenting_at_it(oracle_detector):
    image, _ = disc_image((200, 180), _centres_on_seams((200, 180), 64, 16, 7), 7)
    detections = detect_instances(image, oracle_detector, tile_size=64, overlap=16)
    for mask_threshold in (0.2, 0.5, 0.8):
        direct = segment_instances(
            image, oracle_detector, tile_size=64, overlap=16, mask_threshold=mask_threshold
        )
        painted = detections.paint(mask_threshold)
        np.testing.assert_array_equal(painted.labels, direct.labels)
        np.testing.assert_array_equal(painted.scores, direct.scores)
        assert painted.class_names == direct.class_names
    assert len(direct) > 5


def test_detect_instances_takes_one_2d_image(oracle_detector):
    with pytest.raises(InputError, match="one 2D image"):
        detect_instances(np.zeros((2, 64, 64), np.float32), oracle_detector)


def test_banded_scoring_and_relabelling_equal_the_whole_image_versions():
    """The memory-saving band-by-band forms (issue 37) give the same scores
    and the same labels as the whole-image ones they replace."""
    from scipy import ndimage

    from napari_instseg.core.engine.semantic import _mean_probabilities
    from napari_instseg.core.labels.postprocess import _relabelled_in_place, relabel_sequential

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 40, (301, 257)).astype(np.int32)
    labels[labels % 7 == 3] = 0  # gaps in the ids
    expected = relabel_sequential(labels)
    banded = _relabelled_in_place(labels.copy(), band_pixels=1000)
    np.testing.assert_array_equal(banded, expected)
    assert banded.dtype == np.int32
    probability = rng.integers(0, 256, labels.shape).astype(np.uint8)
    n = int(expected.max())
    whole = ndimage.mean(probability, expected, np.arange(1, n + 1)) / 255.0
    np.testing.assert_allclose(_mean_probabilities(probability, expected), whole, rtol=1e-12)


@pytest.mark.parametrize("band_rows", [1, 7, 64, 1000])
def test_banded_growth_equals_the_whole_image_dilation(band_rows):
    """Seeds grown band by band (no second full-size image) take exactly the
    ids a whole-image 3x3 grey dilation gives them, step after step."""
    from scipy import ndimage

    from napari_instseg.core.labels.postprocess import _grow_once

    rng = np.random.default_rng(3)
    seeds = np.where(rng.random((203, 151)) < 0.02, rng.integers(1, 500, (203, 151)), 0)
    seeds = seeds.astype(np.int32)
    foreground = rng.random(seeds.shape) < 0.7
    expected, banded = seeds.copy(), seeds.copy()
    for _ in range(4):
        grown = ndimage.grey_dilation(expected, size=(3, 3))
        free = (expected == 0) & foreground
        expected[free] = grown[free]
        _grow_once(banded, foreground, band_rows=band_rows)
        np.testing.assert_array_equal(banded, expected)
    assert (expected != seeds).any()  # the seeds did grow

"""Bad input, memory pressure, interruption and determinism."""

import warnings

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import disc_image
from napari_instseg import load_model, segment_instances, segment_semantic
from napari_instseg.cli import main
from napari_instseg.core.types import InputError


class _RaisesOnLargeTiles(torch.nn.Module):
    """Wraps a model and runs out of memory on tiles above ``limit`` pixels."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit = inner, limit
        self.size_divisor = inner.size_divisor
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        if x.shape[-1] * x.shape[-2] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_out_of_memory_retries_with_smaller_tiles(oracle_unet):
    image, truth = disc_image((600, 600), [(100, 100), (300, 420)], 10)
    reference = segment_semantic(image, oracle_unet, tile_size=512)
    oracle_unet.module = _RaisesOnLargeTiles(oracle_unet.module, 256 * 256)
    steps = []
    with pytest.warns(UserWarning, match="retrying with 256 px tiles"):
        result = segment_semantic(image, oracle_unet, tile_size=512, progress=steps.append)
    np.testing.assert_array_equal(result.classes, reference.classes)
    assert max(h * w for h, w in oracle_unet.module.sizes[-3:]) <= 256 * 256
    assert steps[-1].done == steps[-1].total


def test_out_of_memory_on_the_smallest_tiles_is_a_clear_error(oracle_unet):
    oracle_unet.module = _RaisesOnLargeTiles(oracle_unet.module, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MemoryError, match="smallest tiles"):
            segment_semantic(np.random.rand(300, 300), oracle_unet, tile_size=256)


class _GpuOnlyOutOfMemory(torch.nn.Module):
    """Runs out of memory while "on the GPU"; works once moved to the CPU."""

    size_divisor = 1

    def __init__(self, inner):
        super().__init__()
        self.inner, self.on_gpu = inner, True

    def to(self, device):
        self.on_gpu = str(device) != "cpu"
        return self

    def forward(self, x):
        if self.on_gpu:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_gpu_out_of_memory_falls_back_to_a_cpu_copy(oracle_unet, monkeypatch):
    from napari_instseg.core.engine import reading

    image, _ = disc_image((200, 200), [(60, 60)], 10)
    reference = segment_semantic(image, oracle_unet, tile_size=128)
    oracle_unet.module = _GpuOnlyOutOfMemory(oracle_unet.module)
    oracle_unet.device = torch.device("meta")  # stands in for a GPU here
    monkeypatch.setattr(
        reading,
        "to_tensor",
        lambda tiles, device, divisor: torch.from_numpy(
            np.stack(tiles).transpose(0, 3, 1, 2).copy()
        ),
    )
    with pytest.warns(UserWarning, match="continuing on the CPU"):
        result = segment_semantic(image, oracle_unet, tile_size=128)
    np.testing.assert_array_equal(result.classes, reference.classes)
    # the caller's model is left where it was, for its next call or training step
    assert oracle_unet.device.type == "meta" and oracle_unet.module.on_gpu


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 2), (3, 3)])
def test_tiny_and_thin_images(tiny_unet_path, tiny_maskrcnn_path, shape):
    image = np.random.rand(*shape).astype(np.float32)
    assert segment_semantic(image, tiny_unet_path).classes.shape == shape
    assert segment_instances(image, tiny_maskrcnn_path, score_threshold=0.0).labels.shape == shape


@pytest.mark.parametrize("shape", [(2, 2, 3, 40, 40), (1, 2, 1, 2, 30, 30)])
def test_5d_and_6d_stacks(oracle_unet, shape):
    result = segment_semantic(np.random.rand(*shape), oracle_unet)
    assert result.classes.shape == shape
    assert result.instances.labels.shape == shape


def test_huge_dynamic_range_and_partly_nan(oracle_unet):
    image, truth = disc_image((80, 80), [(40, 40)], 10, value=1e30)
    image[0, 0] = -1e30
    image[70:, :] = np.nan
    result = segment_semantic(image.astype(np.float64), oracle_unet)
    assert len(result.instances) == 1


def test_all_zero_image_has_no_objects(oracle_unet, tiny_maskrcnn_path):
    assert len(segment_semantic(np.zeros((50, 50)), oracle_unet).instances) == 0


def test_same_input_gives_identical_labels_on_cpu(tiny_unet_path, tiny_maskrcnn_path):
    image = np.random.default_rng(3).random((150, 130)).astype(np.float32)
    a = segment_semantic(image, tiny_unet_path, device="cpu").instances.labels
    b = segment_semantic(image, tiny_unet_path, device="cpu").instances.labels
    np.testing.assert_array_equal(a, b)
    c = segment_instances(image, tiny_maskrcnn_path, device="cpu", score_threshold=0.0)
    d = segment_instances(image, tiny_maskrcnn_path, device="cpu", score_threshold=0.0)
    np.testing.assert_array_equal(c.labels, d.labels)


def test_cli_unsupported_format_and_unwritable_output(tmp_path, tiny_unet_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.png").write_text("not a png")
    code = main(
        [
            "predict",
            str(tmp_path / "notes.txt"),
            str(tmp_path / "fake.png"),
            "--model",
            str(tiny_unet_path),
            "-o",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 2
    assert "unsupported format .txt" in err[0] and "cannot read image" in err[1]
    tifffile.imwrite(tmp_path / "ok.tif", np.random.rand(20, 20).astype(np.float32))
    # a folder "inside" a file cannot be created, even by root
    args = ["predict", str(tmp_path / "ok.tif"), "--model", str(tiny_unet_path)]
    assert main([*args, "-o", str(tmp_path / "ok.tif" / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create output folder" in err[0]


def test_wrong_channel_count_for_the_model_is_refused(tiny_unet_path):
    with pytest.raises(InputError, match="channels"):
        segment_semantic(np.random.rand(6, 30, 30), tiny_unet_path, channel_axis=0)


@settings(max_examples=15, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int8, np.float32, np.float64, np.bool_]),
        shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=24),
        elements=None,
    ),
)
def test_fuzz_instances_never_raise_unexpectedly(fuzz_maskrcnn, image):
    result = segment_instances(image, fuzz_maskrcnn, score_threshold=0.0)
    expected = image.shape[:-1] if image.ndim >= 3 and image.shape[-1] in (3, 4) else image.shape
    assert result.labels.shape == expected


@pytest.fixture(scope="module")
def fuzz_maskrcnn(tiny_maskrcnn_path):
    return load_model(tiny_maskrcnn_path, "cpu")

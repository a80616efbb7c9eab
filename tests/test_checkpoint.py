"""Checkpoint I/O: round trips, and hostile or broken files refused clearly."""

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_unet_info
from napari_instseg import load_model, segment_semantic
from napari_instseg.core.models import checkpoint
from napari_instseg.core.models.loaded import build_model
from napari_instseg.core.models.registry import list_models, register_checkpoint
from napari_instseg.core.types import ModelError


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    info = tiny_unet_info()
    module = build_model(info)
    path = checkpoint.save_checkpoint(
        tmp_path / "m.safetensors", module.state_dict(), info.to_metadata()
    )
    loaded = load_model(path, "cpu")
    assert loaded.info == info
    for key, value in module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[key], value)
    image = np.random.rand(40, 40).astype(np.float32)
    module.eval()
    np.testing.assert_array_equal(
        segment_semantic(image, loaded).classes, segment_semantic(image, path).classes
    )


def test_half_precision_storage_halves_size_and_loads_as_float32(tmp_path):
    info = tiny_unet_info()
    state = build_model(info).state_dict()
    full = checkpoint.save_checkpoint(tmp_path / "f.safetensors", state, info.to_metadata())
    half = checkpoint.save_checkpoint(
        tmp_path / "h.safetensors", state, info.to_metadata(), half_precision=True
    )
    assert half.stat().st_size < 0.7 * full.stat().st_size
    weights, _ = checkpoint.load_checkpoint(half)
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())


def test_a_registered_checkpoint_is_listed_and_loads_by_name(tmp_path):
    info = tiny_unet_info()
    info.name = "my-finetuned"
    info.description = "fine-tuned on my cells"
    path = checkpoint.save_checkpoint(
        tmp_path / "x.safetensors", build_model(info).state_dict(), info.to_metadata()
    )
    assert register_checkpoint(path) == "my-finetuned"
    assert list_models()["my-finetuned"] == "fine-tuned on my cells"
    assert load_model("my-finetuned", "cpu").info.name == "my-finetuned"


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pwned')",))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_pickles_are_refused_without_being_read(tmp_path, suffix):
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ModelError, match="refused"):
        load_model(path, "cpu")


def test_pickle_renamed_to_safetensors_is_refused(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_model(path, "cpu")


def test_truncated_checkpoint_is_refused(tmp_path, tiny_unet_path):
    data = tiny_unet_path.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        load_model(path, "cpu")


def test_weights_that_do_not_fit_the_metadata_are_refused(tmp_path):
    info = tiny_unet_info()
    state = build_model(info).state_dict()
    info.config = {**info.config, "widths": [8, 16]}
    path = checkpoint.save_checkpoint(tmp_path / "m.safetensors", state, info.to_metadata())
    with pytest.raises(ModelError, match="do not fit"):
        load_model(path, "cpu")


def test_metadata_without_required_fields_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    from safetensors.torch import save_file

    save_file(
        {"w": torch.zeros(1)},
        str(path),
        metadata={checkpoint.METADATA_KEY: json.dumps({"format_version": 1})},
    )
    with pytest.raises(ModelError, match="lacks"):
        load_model(path, "cpu")


def test_coco_model_offline_says_where_to_put_the_weights(tmp_path, monkeypatch):
    from napari_instseg.core.models import bundled as coco

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError) as info:
        load_model("coco-maskrcnn", "cpu")
    message = str(info.value)
    assert "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in message
    assert str(coco.coco_weights_file()) in message


def test_coco_model_loads_from_torch_hub_cache(tmp_path, monkeypatch):
    """With torchvision's file in the hub cache (as after a download), the
    COCO model loads through the registry and segments; it is read with
    weights_only=True."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from napari_instseg import segment_instances
    from napari_instseg.core.models import bundled as coco

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = coco.coco_weights_file()
    path.parent.mkdir(parents=True)
    torch.save(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), path)
    model = load_model("coco-maskrcnn", "cpu")
    assert model.info.class_names[1] == "person" and len(model.info.class_names) == 91
    result = segment_instances(np.random.rand(64, 64, 3), model, score_threshold=0.0)
    assert result.labels.shape == (64, 64)


def test_inference_copy_keeps_predictions(tmp_path):
    """BatchNorm folded and the decoder's concatenations split: the copy
    prediction runs gives the trained module's outputs, in either memory format."""
    from napari_instseg.core.models.unet import SkipConv, inference_copy

    info = tiny_unet_info()
    module = build_model(info)
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-1, 1)
                layer.running_var.uniform_(0.5, 2)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
    module.eval()
    copy = inference_copy(module)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
    assert sum(isinstance(m, SkipConv) for m in copy.modules()) == len(module.decoder.blocks)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())  # untouched
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = module(x)
        torch.testing.assert_close(copy(x), expected, atol=1e-5, rtol=1e-4)
        channels_last = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(copy(channels_last), expected, atol=1e-5, rtol=1e-4)
    path = checkpoint.save_checkpoint(
        tmp_path / "m.safetensors", module.state_dict(), info.to_metadata()
    )
    loaded = load_model(path, "cpu")
    assert loaded.predictor is loaded.inference_module is not None
    assert any(isinstance(m, SkipConv) for m in loaded.predictor.modules())


@pytest.mark.parametrize("band_rows", [16, 17])
@pytest.mark.parametrize("height", [40, 41, 64])
def test_inference_copy_in_bands_of_rows_gives_the_same_values(monkeypatch, height, band_rows):
    """Bands of 16 rows (the fewest) and of 17 (bands that start on odd rows),
    a shorter last band, and an odd height (the upsampled size is not twice the
    coarse one: no bands)."""
    from napari_instseg.core.models.unet import SkipConv, inference_copy

    info = tiny_unet_info()
    info = dataclasses.replace(info, config={**info.config, "widths": [4, 8, 16]})
    torch.manual_seed(0)
    module = build_model(info).eval()
    x = torch.rand(2, 3, height, 30).contiguous(memory_format=torch.channels_last)
    copy = inference_copy(module)
    with torch.no_grad():
        whole = copy(x)
        # a row of the upsampled features: 2 images x 8 channels x 30 columns x 4 bytes
        # at full resolution, 2 x 16 x 15 x 4 at half: 1,920 bytes at both levels
        monkeypatch.setattr(SkipConv, "BAND_BYTES", 1920 * band_rows)
        banded = copy(x)
        torch.testing.assert_close(banded, whole, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(banded, module(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variable", ["TORCH_HOME", "XDG_CACHE_HOME"])
def test_torch_hub_folder_is_found_before_torch_is_imported(tmp_path, monkeypatch, variable):
    """The widgets ask whether the COCO weights exist before torch has loaded:
    the folder must be the one torch will use."""
    import sys

    from napari_instseg.core.models.bundled import torch_hub_dir

    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv(variable, str(tmp_path))
    expected = Path(torch.hub.get_dir())
    monkeypatch.delitem(sys.modules, "torch")  # as before the first import
    assert torch_hub_dir() == expected

"""scripts/train_bundled.py: architecture overrides for the bundled models."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from train_bundled import (  # noqa: E402
    load_fitting_weights,
    main,
    model_info,
    parse_config_overrides,
)

from napari_instseg.core.models import checkpoint  # noqa: E402
from napari_instseg.core.models.bundled import bundled_weights_path  # noqa: E402
from napari_instseg.core.models.loaded import build_model  # noqa: E402
from napari_instseg.core.types import ModelError  # noqa: E402


def test_overrides_are_read_as_json_where_they_parse():
    assert parse_config_overrides(
        ["backbone=resnet34", "box_head_size=512", "anchor_sizes=[4,8,16]"]
    ) == {"backbone": "resnet34", "box_head_size": 512, "anchor_sizes": [4, 8, 16]}


def test_malformed_override_is_a_one_line_error():
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_config_overrides(["resnet34"])


def test_override_reaches_the_built_model_and_its_description():
    info = model_info("maskrcnn", {"backbone": "resnet34", "box_head_size": 128})
    assert info.description.startswith("Mask R-CNN (ResNet-34-FPN)")
    module = build_model(info)
    assert len(module.backbone.body.layer1) == 3  # ResNet-34's first stage; ResNet-18 has 2
    assert module.roi_heads.box_head.fc7.out_features == 128
    # the bundled default is unchanged
    assert model_info("maskrcnn").config["backbone"] == "resnet18"


def test_unknown_override_key_names_the_architecture():
    with pytest.raises(ModelError, match="does not fit maskrcnn"):
        build_model(model_info("maskrcnn", {"no_such_setting": 1}))


def test_init_weights_load_where_they_fit_and_the_changed_layers_start_fresh():
    torch.manual_seed(0)
    old = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    new = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(2, 2))
    wider = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 2))
    start = wider.state_dict()["0.weight"].clone()

    assert load_fitting_weights(new, old.state_dict(), allow_fresh=True) == ["2.weight", "2.bias"]
    assert torch.equal(new[0].weight, old[0].weight)
    assert torch.equal(new[1].bias, old[1].bias)

    # without --config a misfit is refused and nothing is loaded
    assert load_fitting_weights(wider, old.state_dict(), allow_fresh=False) is None
    assert torch.equal(wider[0].weight, start)
    fresh = load_fitting_weights(wider, old.state_dict(), allow_fresh=True)
    assert fresh == ["0.weight", "0.bias", "1.weight"]
    assert torch.equal(wider[1].bias, old[1].bias)


def test_anchor_sizes_take_several_sizes_per_pyramid_level():
    # 4 px anchors for the smallest nuclei beside the 8 px ones, on every level alike
    sizes = [[4, 8], [12, 16], [24, 32], [48, 64], [96, 128]]
    module = build_model(model_info("maskrcnn", {"anchor_sizes": sizes}))
    assert module.rpn.anchor_generator.num_anchors_per_location() == [6] * 5  # 2 sizes x 3 ratios
    assert module.rpn.head.cls_logits.out_channels == 6
    assert module.rpn.anchor_generator.sizes[0] == (4, 8)


def test_export_writes_a_float16_copy_and_leaves_the_bundled_weights_alone(tmp_path):
    state = {"layer.weight": torch.randn(3, 4), "steps": torch.tensor([7])}
    checkpoint.save_checkpoint(tmp_path / "best.safetensors", state, {"name": "x", "note": 1})
    bundled = bundled_weights_path("nuclei-unet")
    before = bundled.stat().st_mtime_ns if bundled.exists() else None
    assert (
        main(["unet", "--run-dir", str(tmp_path), "--export", str(tmp_path / "h.safetensors")]) == 0
    )
    exported, metadata = checkpoint.load_checkpoint(tmp_path / "h.safetensors")
    assert metadata["note"] == 1
    # stored in float16 (read back as float32): the values are float16's roundings
    torch.testing.assert_close(exported["layer.weight"], state["layer.weight"].half().float())
    assert not torch.equal(exported["layer.weight"], state["layer.weight"])
    assert (bundled.stat().st_mtime_ns if bundled.exists() else None) == before

"""scripts/train_bundled.py: architecture overrides for the bundled models."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from train_bundled import model_info, parse_config_overrides  # noqa: E402

from napari_instseg.core.models.registry import build_model  # noqa: E402
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

"""Shared fixtures: tiny random-initialised checkpoints and oracle models.

Unit tests never need the bundled weights: they check shapes and contracts
with small random models, and stitching logic with "oracle" models whose
output is known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_instseg.core.models import checkpoint
from napari_instseg.core.models.info import ModelInfo
from napari_instseg.core.models.loaded import LoadedModel, build_model

NUCLEI_CLASSES = ["background", "nucleus", "boundary"]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="needs --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def tiny_unet_info(tile_size: int = 64) -> ModelInfo:
    return ModelInfo(
        name="tiny-unet",
        architecture="unet",
        config={"in_channels": 3, "num_classes": 3, "widths": [4, 8]},
        class_names=NUCLEI_CLASSES,
        tile_size=tile_size,
        postprocess={"min_size": 1, "instance_class": "nucleus"},
    )


def tiny_maskrcnn_info(tile_size: int = 128) -> ModelInfo:
    return ModelInfo(
        name="tiny-maskrcnn",
        architecture="maskrcnn",
        config={
            "num_classes": 2,
            "min_size": tile_size,
            "max_size": tile_size,
            "detections_per_image": 20,
            "rpn_pre_nms_top_n_test": 100,
            "rpn_post_nms_top_n_test": 50,
            "box_score_thresh": 0.0,
        },
        class_names=["background", "nucleus"],
        tile_size=tile_size,
    )


@pytest.fixture(scope="session")
def tiny_unet_path(tmp_path_factory):
    info = tiny_unet_info()
    path = tmp_path_factory.mktemp("models") / "tiny-unet.safetensors"
    checkpoint.save_checkpoint(path, build_model(info).state_dict(), info.to_metadata())
    return path


@pytest.fixture(scope="session")
def tiny_maskrcnn_path(tmp_path_factory):
    info = tiny_maskrcnn_info()
    path = tmp_path_factory.mktemp("models") / "tiny-maskrcnn.safetensors"
    checkpoint.save_checkpoint(
        path, build_model(info).state_dict(), info.to_metadata(), half_precision=True
    )
    return path


class ThresholdNet(nn.Module):
    """Oracle 'U-Net': interior where channel 0 > 0.5, no context used, so
    tiled and untiled predictions must agree exactly."""

    size_divisor = 1

    def forward(self, x):
        signal = (x[:, :1] - 0.5) * 20
        return torch.cat([-signal, signal, torch.full_like(signal, -50)], dim=1)


@pytest.fixture
def oracle_unet():
    info = ModelInfo(
        name="oracle",
        architecture="unet",
        config={},
        class_names=NUCLEI_CLASSES,
        normalization={"low": 0.0, "high": 100.0},
        tile_size=64,
        postprocess={"min_size": 1, "instance_class": "nucleus"},
    )
    return LoadedModel(ThresholdNet(), info, torch.device("cpu"))


def disc_image(shape, centres, radius, value=1.0):
    """Float image of bright discs (plus a 0 pixel and a 1 pixel so percentile
    normalisation keeps values) and their true labels."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[inside] = value
        labels[inside] = i
    return image, labels


def disc_samples(n=3):
    """``n`` annotated 64x64 RGB training images of four discs each."""
    from napari_instseg.core.training.samples import AnnotatedImage

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        centres = [tuple(rng.integers(12, 52, 2)) for _ in range(4)]
        image, labels = disc_image((64, 64), centres, 5)
        rgb = np.repeat((image * 200 + 20)[..., None], 3, axis=-1).astype(np.uint8)
        out.append(AnnotatedImage.create(f"s{i}", rgb, labels, {"low": 1.0, "high": 99.8}))
    return out

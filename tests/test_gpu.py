"""The CUDA path: prediction and training on a GPU (skipped without one).

Prediction on CUDA runs in float16 and on CPUs in float32 or bfloat16, so
results are compared as segmentations (matched objects), not pixel by pixel.
"""

from importlib import resources

import numpy as np
import pytest
import tifffile
import torch

from conftest import disc_samples, tiny_maskrcnn_info, tiny_unet_info
from napari_instseg import load_model, segment_instances, segment_semantic
from napari_instseg.core.draining import drain
from napari_instseg.core.labels.metrics import match_counts
from napari_instseg.core.models.bundled import bundled_weights_path
from napari_instseg.core.models.loaded import LoadedModel, build_model
from napari_instseg.core.training.config import TrainConfig
from napari_instseg.core.training.recipes import MaskRCNNTrainer, UNetTrainer

pytestmark = pytest.mark.gpu


def _nuclei_sample() -> np.ndarray:
    path = resources.files("napari_instseg") / "samples" / "nuclei.tif"
    with resources.as_file(path) as file:
        return tifffile.imread(file)


def _f1_at_half(reference: np.ndarray, other: np.ndarray) -> float:
    counts = match_counts(reference, other, thresholds=(0.5,))
    return counts.summary()["f1"][0]


@pytest.mark.bundled
@pytest.mark.parametrize("name", ["nuclei-maskrcnn", "nuclei-unet"])
def test_bundled_model_on_cuda_matches_cpu(name):
    if not bundled_weights_path(name).exists():
        pytest.skip(f"{name} weights are not installed")
    image = _nuclei_sample()
    segment = segment_instances if name == "nuclei-maskrcnn" else segment_semantic
    cpu = segment(image, load_model(name, "cpu"))
    gpu = segment(image, load_model(name, "cuda"))
    cpu_labels = cpu.labels if name == "nuclei-maskrcnn" else cpu.instances.labels
    gpu_labels = gpu.labels if name == "nuclei-maskrcnn" else gpu.instances.labels
    assert cpu_labels.max() > 20
    assert _f1_at_half(cpu_labels, gpu_labels) > 0.95


@pytest.mark.parametrize(
    "info, trainer_class",
    [(tiny_unet_info(), UNetTrainer), (tiny_maskrcnn_info(tile_size=64), MaskRCNNTrainer)],
    ids=["unet", "maskrcnn"],
)
def test_training_runs_on_cuda_in_bfloat16(tmp_path, info, trainer_class):
    device = torch.device("cuda")
    loaded = LoadedModel(build_model(info).to(device), info, device)
    config = TrainConfig(iterations=3, batch_size=2, val_every=3, warmup_iterations=1)
    config.augment.crop_size = 48
    samples = disc_samples()
    trainer = trainer_class(loaded, samples, samples[:1], config, tmp_path)
    with trainer._autocast():
        assert torch.is_autocast_enabled("cuda")
    assert drain(trainer.run()).iteration == 3
    losses = [float(r.split(",")[1]) for r in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert next(loaded.module.parameters()).device.type == "cuda"
    assert load_model(tmp_path / "best.safetensors", "cpu").info.architecture == info.architecture

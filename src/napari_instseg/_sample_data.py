"""Sample images from DSB2018 (BBBC038, CC0; Caicedo et al., Nature Methods 2019),
taken from its validation split so the bundled models never trained on them."""

from __future__ import annotations

from importlib import resources

import numpy as np

SAMPLES = {
    "nuclei": "2D fluorescence nuclei field (520x696, 76 nuclei)",
    "nuclei-histology": "H&E histology field (256x320 RGB, 111 nuclei)",
}


def load_sample(key: str, with_labels: bool = False):
    """The sample image (and its ground-truth labels) as numpy arrays."""
    import tifffile

    if key not in SAMPLES:
        raise KeyError(f"unknown sample {key!r}; samples: {', '.join(SAMPLES)}")
    folder = resources.files("napari_instseg") / "samples"
    image = tifffile.imread(folder / f"{key}.tif")
    if not with_labels:
        return image
    return image, tifffile.imread(folder / f"{key}_labels.tif")


def _layer(key: str, **kwargs) -> list[tuple[np.ndarray, dict, str]]:
    return [(load_sample(key), {"name": key, **kwargs}, "image")]


def nuclei():
    return _layer("nuclei", colormap="gray", contrast_limits=(0, 80))


def nuclei_histology():
    return _layer("nuclei-histology", rgb=True)

"""napari-instseg: U-Net and Mask R-CNN segmentation for napari.

The public API is imported lazily so that ``import napari_instseg`` (done by
napari when it reads the manifest) does not import torch.
"""

__version__ = "0.1.0"

_API = {
    "segment_instances": "napari_instseg.core.engine.predict",
    "segment_semantic": "napari_instseg.core.engine.predict",
    "load_model": "napari_instseg.core.models.loading",
    "list_models": "napari_instseg.core.models.registry",
    "InstanceResult": "napari_instseg.core.types",
    "SemanticResult": "napari_instseg.core.types",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_instseg' has no attribute {name!r}")

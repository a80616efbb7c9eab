"""napari-instseg: U-Net and Mask R-CNN segmentation for napari.

The public API is imported lazily so that ``import napari_instseg`` (done by
napari when it reads the manifest) does not import torch. ``docs/api.md``
lists every name below with its signature (``scripts/make_api_reference.py``
writes it; a test keeps it current).
"""

__version__ = "0.1.0"

# name -> the module that defines it ("module:attribute" where the name in the
# module is shorter), in the order of docs/api.md
_API = {
    # segmentation
    "segment_semantic": "napari_instseg.core.engine.predict",
    "segment_instances": "napari_instseg.core.engine.predict",
    "segment": "napari_instseg.core.engine.predict",
    "iter_segment_semantic": "napari_instseg.core.engine.semantic",
    "iter_segment_instances": "napari_instseg.core.engine.instance",
    "detect_instances": "napari_instseg.core.engine.instance",
    "segment_in_boxes": "napari_instseg.core.engine.prompts",
    "SemanticOptions": "napari_instseg.core.engine.options",
    "InstanceOptions": "napari_instseg.core.engine.options",
    # models
    "load_model": "napari_instseg.core.models.loading",
    "list_models": "napari_instseg.core.models.registry",
    "register_checkpoint": "napari_instseg.core.models.registry",
    "export_bioimageio": "napari_instseg.core.models.bioimageio_export",
    # labels: linking, curation, metrics
    "link_stack": "napari_instseg.core.labels.linking",
    "linked_object_table": "napari_instseg.core.labels.linking",
    "merge_objects": "napari_instseg.core.labels.curation:merge",
    "split_object": "napari_instseg.core.labels.curation:split",
    "remove_small_objects": "napari_instseg.core.labels.curation:remove_small",
    "fill_holes": "napari_instseg.core.labels.curation",
    "relabel_consecutive": "napari_instseg.core.labels.curation",
    "match_counts": "napari_instseg.core.labels.metrics",
    "score_dataset": "napari_instseg.core.labels.metrics",
    # a folder under review (the Image series widget's core)
    "ImageSeries": "napari_instseg.core.series.folder",
    "iter_segment_series": "napari_instseg.core.series.runs",
    "iter_train_on_reviewed": "napari_instseg.core.series.runs",
    "write_series_measurements": "napari_instseg.core.series.runs",
    "drain": "napari_instseg.core.draining",
    # files and tables
    "read_image": "napari_instseg.core.io.images",
    "object_table": "napari_instseg.core.io.tables",
    "measurements": "napari_instseg.core.io.tables",
    "coco_document": "napari_instseg.core.io.coco_json",
    "read_coco": "napari_instseg.core.io.coco_json",
    # results and errors
    "InstanceResult": "napari_instseg.core.types",
    "SemanticResult": "napari_instseg.core.types",
    "Progress": "napari_instseg.core.types",
    "Cancelled": "napari_instseg.core.types",
    "InputError": "napari_instseg.core.types",
    "ModelError": "napari_instseg.core.types",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        module, _, attribute = _API[name].partition(":")
        return getattr(importlib.import_module(module), attribute or name)
    raise AttributeError(f"module 'napari_instseg' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

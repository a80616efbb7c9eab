"""The public prediction API: any image in, instances or class maps out.

The engines are generators (``iter_segment_semantic`` in
``semantic_engine``, ``iter_segment_instances`` in ``instance_engine``) that
yield a ``Progress`` per tile and return the result, so a widget runs them in
a thread with progress and cancel. ``segment_semantic`` and
``segment_instances`` drain them synchronously for scripts, the CLI and
tests. Every option is keyword-only and documented once, in ``core.options``.

Images are read tile by tile, so dask and zarr inputs are never
materialised whole (except when ``rescale`` != 1).
"""

from __future__ import annotations

from ..draining import CancelCheck, ProgressCallback, drain
from ..labels.detections import Detections
from ..types import InstanceResult, SemanticResult
from .instance import detect_instances, iter_segment_instances
from .semantic import iter_segment_semantic

__all__ = [
    "Detections",
    "detect_instances",
    "drain",
    "iter_segment_instances",
    "iter_segment_semantic",
    "segment",
    "segment_instances",
    "segment_semantic",
]


def segment_semantic(
    image,
    model="nuclei-unet",
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    **options,
) -> SemanticResult:
    """Class map, class probabilities and derived instances of ``image``.

    ``image``: 2D gray, RGB(A), multichannel or a stack, any numeric dtype,
    numpy/dask/zarr. ``model``: a registered name, a .safetensors checkpoint,
    or ``load_model(...)``. ``progress(Progress)`` is called per tile;
    ``cancel()`` returning True stops with ``Cancelled``. The keyword options
    (device, channel_axis, tile_size, overlap, rescale, min_size,
    return_probabilities) are described in ``napari_instseg.core.engine.options``.
    """
    return drain(iter_segment_semantic(image, model, **options), progress, cancel)


def segment_instances(
    image,
    model="nuclei-maskrcnn",
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    **options,
) -> InstanceResult:
    """Instances (labels, boxes, scores, classes) of ``image`` with a Mask
    R-CNN model (or any instance model). Images, models, ``progress`` and
    ``cancel`` as in ``segment_semantic``; the keyword options (device,
    channel_axis, tile_size, overlap, rescale, score_threshold,
    mask_threshold) are described in ``napari_instseg.core.engine.options``.
    """
    return drain(iter_segment_instances(image, model, **options), progress, cancel)


def segment(
    image,
    model,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    **options,
) -> tuple[InstanceResult, SemanticResult | None]:
    """Either engine, as the model's task says: (instances, the semantic
    result or None), for callers that take any model (CLI, block-wise).
    The thresholds apply to instance models only; class probabilities are
    not kept unless ``return_probabilities`` says so."""
    from ..models.architectures import SEMANTIC
    from ..models.loading import load_model

    loaded = load_model(model, options.pop("device", "auto"))
    if loaded.info.task == SEMANTIC:
        options.setdefault("return_probabilities", False)
        semantic = segment_semantic(image, loaded, progress=progress, cancel=cancel, **options)
        return semantic.instances, semantic
    instances = segment_instances(
        image, loaded, progress=progress, cancel=cancel,
        score_threshold=score_threshold, mask_threshold=mask_threshold, **options,
    )  # fmt: skip
    return instances, None

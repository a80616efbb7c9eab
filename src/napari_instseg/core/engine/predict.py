"""The public prediction API: any image in, instances or class maps out.

The engines are generators (``iter_segment_semantic`` in ``semantic``,
``iter_segment_instances`` in ``instance``) that yield a ``Progress`` per
tile and return the result, so a widget runs them in a thread with progress
and cancel. ``segment_semantic`` and ``segment_instances`` drain them
synchronously for scripts, the CLI and tests. Every option is keyword-only,
defined once in ``options`` and listed in each function's signature.

Images are read tile by tile, so dask and zarr inputs are never
materialised whole (except when ``rescale`` != 1).
"""

from __future__ import annotations

from ..draining import CancelCheck, ProgressCallback, drain
from ..models.architectures import SEMANTIC
from ..models.loading import load_model
from ..types import InstanceResult, SemanticResult
from .instance import iter_segment_instances
from .options import AnyModelOptions, InstanceOptions, SemanticOptions, takes_options
from .semantic import iter_segment_semantic


@takes_options(SemanticOptions)
def segment_semantic(
    image,
    model="nuclei-unet",
    *,
    options: SemanticOptions,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> SemanticResult:
    """Class map, class probabilities and derived instances of ``image``.

    ``image``: 2D gray, RGB(A), multichannel or a stack, any numeric dtype,
    numpy/dask/zarr. ``model``: a registered name, a .safetensors checkpoint,
    a bioimage.io package or ``load_model(...)``. ``progress(Progress)`` is
    called per tile; ``cancel()`` returning True stops with ``Cancelled``.
    """
    return drain(iter_segment_semantic(image, model, **options.keywords()), progress, cancel)


@takes_options(InstanceOptions)
def segment_instances(
    image,
    model="nuclei-maskrcnn",
    *,
    options: InstanceOptions,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> InstanceResult:
    """Instances (labels, boxes, scores, classes) of ``image`` with a Mask
    R-CNN model (or any instance model). Images, models, ``progress`` and
    ``cancel`` as in ``segment_semantic``.
    """
    return drain(iter_segment_instances(image, model, **options.keywords()), progress, cancel)


@takes_options(AnyModelOptions)
def segment(
    image,
    model,
    *,
    options: AnyModelOptions,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> tuple[InstanceResult, SemanticResult | None]:
    """Either engine, as the model's task says: (instances, the semantic
    result or None), for callers that take any model (CLI, block-wise).
    Each engine takes its own options (the thresholds apply to instance
    models only, ``min_size`` to semantic ones); class probabilities are
    not kept unless ``return_probabilities`` says so."""
    loaded = load_model(model, options.device)
    given = options.keywords()
    if loaded.info.task == SEMANTIC:
        keep = given["return_probabilities"]
        semantic = segment_semantic(
            image, loaded, progress=progress, cancel=cancel,
            **{**SemanticOptions.select(given), "return_probabilities": bool(keep)},
        )  # fmt: skip
        return semantic.instances, semantic
    instances = segment_instances(
        image, loaded, progress=progress, cancel=cancel, **InstanceOptions.select(given)
    )
    return instances, None

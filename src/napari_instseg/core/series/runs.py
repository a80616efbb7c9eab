"""Work on a whole image series: segmenting the images that need it (never
a reviewed one), the object size the reviewed labels give, and the training
samples they make.

``iter_segment_series`` is a generator like the engines: it yields
``SeriesProgress`` per tile and ``ImageSegmented`` / ``ImageFailed`` per
image, so the widget's worker shows progress, cancels between tiles and
shows each image's result as soon as it is saved.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.diameter import training_diameter
from ..engine.instance import iter_segment_instances
from ..engine.options import InstanceOptions, SemanticOptions
from ..engine.reading import resolve_axes
from ..engine.semantic import iter_segment_semantic
from ..io.tables import (
    channel_names_of,
    measurements,
    object_table,
    write_measurement_rows,
)
from ..models.architectures import SEMANTIC
from ..models.loading import load_model
from ..training.finetune import annotated
from ..training.loop import TrainingStep
from ..training.samples import AnnotatedImage
from ..types import Cancelled, InputError, ModelError, Progress
from .folder import NOT_SEGMENTED, REVIEWED, SEGMENTED, ImageSeries


@dataclass(frozen=True)
class SeriesProgress:
    """Tile progress within image ``image`` (``done_images`` of ``images`` finished)."""

    image: int
    done_images: int
    images: int
    tiles: Progress


@dataclass(frozen=True)
class ImageSegmented:
    image: int
    objects: int
    seconds: float


@dataclass(frozen=True)
class ImageFailed:
    image: int
    reason: str


@dataclass
class SeriesRun:
    """What a run did: images segmented, those skipped and why, the diameter used."""

    segmented: list[int] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # key -> one-line reason
    skipped_reviewed: int = 0
    diameter: float | str | None = None
    diameter_source: str = ""  # "reviewed labels", "given", ""

    def describe(self) -> str:
        text = f"{len(self.segmented)} image(s) segmented"
        if self.skipped_reviewed:
            text += f", {self.skipped_reviewed} reviewed left as they are"
        if self.failed:
            text += f", {len(self.failed)} unreadable skipped ({', '.join(self.failed)})"
        if self.diameter_source == "reviewed labels":
            text += f"; object diameter {self.diameter:.1f} px from the reviewed labels"
        return text


def reviewed_diameter(series: ImageSeries) -> float | None:
    """The objects' typical diameter in the reviewed labels (the median over
    images of each image's median), or None with too few objects."""
    labels = [series.read_labels(k) for k in series.indices(REVIEWED)]
    return training_diameter([plane for image in labels if image is not None for plane in
                              image.reshape(-1, *image.shape[-2:])])  # fmt: skip


def iter_segment_series(
    series: ImageSeries,
    model,
    *,
    indices: list[int] | None = None,
    redo_segmented: bool = False,
    size_from_reviewed: bool = True,
    **options,
) -> Generator[SeriesProgress | ImageSegmented | ImageFailed, None, SeriesRun]:
    """Segment the series' images that are not segmented (with
    ``redo_segmented``, also those segmented but not reviewed; ``indices``
    limits the run to those images) and save each result at once. Reviewed
    images are never segmented again. Without a ``diameter`` option, the
    object size of the reviewed labels (when they have enough objects) is
    used for the others. ``options`` are the engine's
    (``SemanticOptions``/``InstanceOptions``); a file that cannot be read is
    reported and skipped, the rest go on."""
    loaded = load_model(model, options.get("device", "auto"))
    name = model if isinstance(model, str) else loaded.name
    states = (NOT_SEGMENTED, SEGMENTED) if redo_segmented else (NOT_SEGMENTED,)
    wanted = series.indices(*states) if indices is None else list(indices)
    run = SeriesRun(skipped_reviewed=sum(series.record(k).state == REVIEWED for k in wanted))
    wanted = [k for k in wanted if series.record(k).state != REVIEWED]
    run.diameter = options.get("diameter")
    run.diameter_source = "given" if run.diameter is not None else ""
    if run.diameter is None and size_from_reviewed and loaded.info.object_diameter:
        measured = reviewed_diameter(series)
        if measured is not None:
            options["diameter"] = run.diameter = measured
            run.diameter_source = "reviewed labels"
    semantic = loaded.info.task == SEMANTIC
    engine = iter_segment_semantic if semantic else iter_segment_instances
    engine_options = (SemanticOptions if semantic else InstanceOptions).select(options)
    if semantic:
        engine_options.setdefault("return_probabilities", False)
    for done, index in enumerate(wanted):
        key = series.images[index].key
        started = time.perf_counter()
        try:
            image, channel_axis = series.read_image(index, options.get("channel_axis"))
            per_image = {**engine_options, "channel_axis": channel_axis}
            if len(resolve_axes(image, channel_axis)[1]) != 1:
                per_image["link"] = None  # linking is for stacks; the 2D images go as they are
            steps = engine(image, loaded, **per_image)
            while True:
                try:
                    step = next(steps)
                except StopIteration as stop:
                    result = stop.value
                    break
                yield SeriesProgress(index, done, len(wanted), step)
            instances = result.instances if semantic else result
            series.save(
                index, instances.labels, reviewed=False, model=name, table=object_table(instances)
            )
        except Cancelled:
            raise
        except (InputError, ModelError, OSError, ValueError, MemoryError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            run.failed[key] = reason
            series.unreadable[key] = reason
            yield ImageFailed(index, reason)
            continue
        run.segmented.append(index)
        yield ImageSegmented(index, series.record(index).objects, time.perf_counter() - started)
    return run


def reviewed_samples(
    series: ImageSeries, info, annotated_region_only: bool = False
) -> list[AnnotatedImage]:
    """Training samples from the reviewed images (each slice of a stack with
    objects is one sample), for the fine-tuning core."""
    samples = []
    for index in series.indices(REVIEWED):
        labels = series.read_labels(index)
        image, _ = series.read_channels_last(index)
        stem = series.images[index].stem
        stack = labels.shape[:-2]
        for plane in np.ndindex(*stack) if stack else [()]:
            if not labels[plane].any():
                continue
            name = f"{stem}{list(plane)}" if plane else stem
            samples.append(
                annotated(
                    name, image[plane], labels[plane], info,
                    annotated_region_only=annotated_region_only,
                )
            )  # fmt: skip
    if not samples:
        raise InputError("no reviewed image has objects yet: review (and correct) some first")
    return samples


def write_series_measurements(series: ImageSeries, path, channel_names=None) -> int:
    """One CSV for the whole series: ``image`` (and ``slice`` for stacks),
    then each object's measurements (``io.tables.measurements``: shape, and
    mean, median and sum intensity per channel) for every image with labels.
    Returns the number of objects written."""
    rows = []
    for index in series.indices(SEGMENTED, REVIEWED):
        labels = series.read_labels(index)
        image, channel_axis_given = series.read_channels_last(index)
        has_channels = image.ndim == labels.ndim + 1
        rgb = has_channels and not channel_axis_given  # a trailing axis of 3 or 4
        names = channel_names or (channel_names_of(image.shape[-1], rgb) if has_channels else None)
        objects = series.read_objects(index)
        classes = {i: name for i, (name, _) in objects.items()}
        scores = {i: score for i, (_, score) in objects.items()}
        for plane in np.ndindex(*labels.shape[:-2]) if labels.ndim > 2 else [()]:
            lead = {"image": series.images[index].key}
            if plane:
                lead["slice"] = ",".join(map(str, plane))
            for row in measurements(labels[plane], image[plane], classes, scores, names):
                rows.append({**lead, **row})
    write_measurement_rows(path, rows, leading=("image", "slice"))
    return len(rows)


@dataclass(frozen=True)
class TrainedModel:
    name: str  # registered (and remembered for later sessions)
    path: Path
    images: int  # reviewed images trained on
    before: float | None  # validation score of the base model
    after: float
    notes: tuple[str, ...] = ()  # what was done with the images (rescaled to the model's size)
    kept_base_weights: bool = False  # no checkpoint validated as well as the base model


def iter_train_on_reviewed(
    series: ImageSeries,
    model,
    output=None,
    *,
    minutes: float | None = 5.0,
    epochs: float | None = None,
    device: str = "auto",
) -> Generator[TrainingStep, None, TrainedModel]:
    """Fine-tune ``model`` on the series' reviewed images (within ``minutes``,
    or ``epochs`` passes), save it (default: ``series.next_model_path()``) and
    register it; yields a ``TrainingStep`` per iteration, for a live plot.
    The images are rescaled so that their objects have the model's trained
    size (a few corrected images then teach the new look, not a new scale;
    docs/benchmarks.md), and the new model rescales new images alike."""
    from ..models.user_settings import remember_checkpoint
    from ..training import finetune

    output = Path(output) if output else series.next_model_path()
    base = load_model(model, device)
    samples = reviewed_samples(series, base.info)
    job = finetune.prepare(samples, model=base, max_minutes=minutes, epochs=epochs,
                           device=device, name=output.stem, at_model_size=True)  # fmt: skip
    yield from job.trainer.steps()
    trainer = job.trainer
    saved = job.save(output)
    kept_base = bool(job.baseline) and trainer.state.best_iteration == 0
    return TrainedModel(remember_checkpoint(saved), saved, len(samples),
                        job.baseline.get("score"), trainer.state.best_score,
                        tuple(job.notes), kept_base)  # fmt: skip

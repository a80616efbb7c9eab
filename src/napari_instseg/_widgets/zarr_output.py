"""The segmentation widgets' "block by block into a zarr file" choice.

For a gray image (2D or a stack) too large to hold its labels in memory (a
lazily opened OME-Zarr slide, say), the engine runs block-wise
(``core.blockwise``) in the widget's worker and writes the labels region by
region into a new OME-Zarr label image; the Labels layer then shows that
file, read lazily.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, FileEdit

from ._common import UserError


class ZarrOutputControls:
    def __init__(self):
        self.enabled = CheckBox(text="Block by block into a zarr file", value=False)
        self.enabled.tooltip = (
            "For large gray images: segment 2048 px blocks one after another and write "
            "the labels to an OME-Zarr file instead of memory"
        )
        self.path = FileEdit(label="Labels file", mode="w", filter="*.zarr", visible=False)
        self.enabled.changed.connect(lambda on: setattr(self.path, "visible", bool(on)))

    @property
    def widgets(self) -> list:
        return [self.enabled, self.path]

    def target(self, layer, channel_axis, options: dict) -> Path | None:
        """The zarr file to write, or None when off; a UserError when the
        image or the other options do not suit a block-wise run."""
        if not self.enabled.value:
            return None
        if layer.rgb or channel_axis is not None:
            raise UserError("block by block into zarr takes gray images (2D or stacks)")
        from ..core.engine.options import blockwise_refusals

        refused = blockwise_refusals(options)
        if refused:
            raise UserError(f"block by block into zarr does not take {', '.join(refused)}")
        path = Path(str(self.path.value or "")).expanduser()
        if path.suffix.lower() != ".zarr":
            raise UserError("choose a labels file ending in .zarr")
        if path.exists():
            raise UserError(f"{path.name} exists; choose another labels file")
        if not path.parent.is_dir():
            raise UserError(f"{path.parent} is not a folder")
        return path


def blockwise_generator(data, kwargs: dict, target: Path):
    """The block-wise engine's generator for the widget's worker (``target``
    has checked that the options suit it)."""
    from ..core.blockwise.blocks import iter_segment_blockwise

    kwargs = dict(kwargs)
    return iter_segment_blockwise(data, kwargs.pop("model"), labels_to=target, **kwargs)


def large_input_plan(data, channel_axis, target, task: str, device: str) -> str:
    """A large image's plan (size, time here, labels' size and destination)
    for the status line before any work, "" for an ordinary one; a UserError
    when its labels cannot be held in memory (``core.blockwise.sizing``)."""
    from ..core.blockwise.sizing import LARGE_PIXELS, plan_run

    plan = plan_run(
        data.shape, data.dtype, task, channel_axis=channel_axis,
        device="cuda" if str(device).startswith("cuda") else "cpu",
        labels_in_memory=target is None, destination=target or "a Labels layer",
    )  # fmt: skip
    if plan.pixels < LARGE_PIXELS:
        return ""
    refusal = plan.refusal(fix="tick 'Block by block into a zarr file'")
    if refusal is not None:
        raise UserError(refusal)
    return plan.describe()

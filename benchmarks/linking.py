"""Linking through z and time on synthetic stacks built from real DSB images.

    python benchmarks/linking.py [--images 4] [--threads 2] [--models nuclei-unet ...]
                                 [--screenshot docs/images/linking-3d.png]

From each of the first gray val images of one kind (default the 520x696
fluorescence screens, where the models find nuclei at their trained size;
never test images) two stacks are built,
with their true labels:

- **z**: 9 slices; each nucleus has its own random centre slice and erodes
  away from it (its pixels deeper than ``|z - centre| / 4`` of its inner
  radius stay), as a nucleus does through a confocal stack.
- **t**: 10 frames; each nucleus moves on its own random walk, a step of at
  most 2 px per frame, pasted over the image's background.

Each stack is segmented with ``link="z"`` or ``link="t"``. In every slice,
predicted objects are matched to true ones at IoU > 0.5; then (issue 20's
targets):

- z, *true kept*: of the true objects matched in >= 2 slices, the share whose
  matches all carry one predicted id (>= 0.90);
- t, *links kept*: of the true objects matched in two consecutive frames, the
  share of those frame pairs whose two matches carry one predicted id (>= 0.95);
- *pure*: of the predicted ids matched in >= 2 slices, the share that stays on
  one true object (>= 0.90 z, >= 0.95 t).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from _common import git_commit, machine_description  # noqa: E402
from accuracy_and_speed import DEFAULT_DATA, load_images  # noqa: E402

from napari_instseg import load_model, segment_instances, segment_semantic  # noqa: E402
from napari_instseg.core.labels.metrics import match_instances  # noqa: E402

Z_SLICES, T_FRAMES, MAX_STEP = 9, 10, 2.0


def z_stack(image, labels, rng):
    """Nuclei eroding away from their own random centre slice."""
    from skimage.segmentation import find_boundaries

    inside = (labels > 0) & ~find_boundaries(labels, mode="inner")
    depth = ndimage.distance_transform_edt(inside)
    ids = np.arange(1, labels.max() + 1)
    radius = np.zeros(len(ids) + 1)
    radius[1:] = ndimage.maximum(depth, labels, ids)
    centre = np.zeros(len(ids) + 1)
    centre[1:] = rng.integers(2, Z_SLICES - 2, len(ids))
    background = np.median(image[labels == 0]) if (labels == 0).any() else 0
    images, truths = [], []
    for z in range(Z_SLICES):
        kept = (labels > 0) & (depth > np.abs(z - centre[labels]) / 4 * radius[labels])
        images.append(np.where(kept, image, background).astype(image.dtype))
        truths.append(np.where(kept, labels, 0))
    return np.stack(images), np.stack(truths)


def t_stack(image, labels, rng):
    """Nuclei on independent random walks of at most MAX_STEP px per frame."""
    ids = np.arange(1, labels.max() + 1)
    background = np.median(image[labels == 0]) if (labels == 0).any() else 0
    angle = rng.uniform(0, 2 * np.pi, (T_FRAMES, len(ids)))
    length = rng.uniform(0, MAX_STEP, (T_FRAMES, len(ids)))
    steps = np.stack([np.sin(angle), np.cos(angle)], -1) * length[..., None]
    steps[0] = 0
    offsets = np.cumsum(steps, axis=0).round().astype(int)
    objects = ndimage.find_objects(labels)
    height, width = labels.shape
    images, truths = [], []
    for t in range(T_FRAMES):
        frame = np.full_like(image, background)
        truth = np.zeros(labels.shape, np.int32)
        for i, sl in zip(ids, objects):
            if sl is None:
                continue
            ys, xs = np.nonzero(labels[sl] == i)
            ys_src, xs_src = ys + sl[0].start, xs + sl[1].start
            ys_dst, xs_dst = ys_src + offsets[t, i - 1, 0], xs_src + offsets[t, i - 1, 1]
            ok = (ys_dst >= 0) & (ys_dst < height) & (xs_dst >= 0) & (xs_dst < width)
            frame[ys_dst[ok], xs_dst[ok]] = image[ys_src[ok], xs_src[ok]]
            truth[ys_dst[ok], xs_dst[ok]] = i
        images.append(frame)
        truths.append(truth)
    return np.stack(images), np.stack(truths)


def slice_matches(truth, predicted):
    """Per slice, the (true id, predicted id) pairs matched at IoU > 0.5."""
    for z in range(truth.shape[0]):
        match = match_instances(truth[z], predicted[z], 0.5)
        yield z, list(zip(match.matched_true.tolist(), match.matched_pred.tolist()))


def scores(truth, predicted, along):
    """(kept, total) of true objects or links, (pure, total) of predicted ids."""
    true_to_pred: dict[int, dict[int, int]] = {}  # true id -> slice -> predicted id
    pred_to_true: dict[int, set] = {}
    pred_slices: dict[int, int] = {}
    for z, pairs in slice_matches(truth, predicted):
        for t_id, p_id in pairs:
            true_to_pred.setdefault(t_id, {})[z] = p_id
            pred_to_true.setdefault(p_id, set()).add(t_id)
            pred_slices[p_id] = pred_slices.get(p_id, 0) + 1
    if along == "z":
        spanning = [s for s in true_to_pred.values() if len(s) >= 2]
        kept = sum(len(set(s.values())) == 1 for s in spanning)
        total = len(spanning)
    else:
        links = [(s[z], s[z + 1]) for s in true_to_pred.values() for z in s if z + 1 in s]
        kept = sum(a == b for a, b in links)
        total = len(links)
    multi = [p for p, n in pred_slices.items() if n >= 2]
    pure = sum(len(pred_to_true[p]) == 1 for p in multi)
    return kept, total, pure, len(multi)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument(
        "--kind",
        default="screen-520x696",
        help="image kind to build stacks from (benchmarks/accuracy_and_speed.py's kinds)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["nuclei-unet", "nuclei-maskrcnn"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--screenshot", help="save a 3D view of the first z-stack here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.data.exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    print(f"# linking benchmark, commit {git_commit()}")
    print(f"# {machine_description()}")
    rng = np.random.default_rng(args.seed)
    stacks = []
    for kind, image, labels, gray in load_images(args.data, "val"):
        if gray and kind == args.kind and len(stacks) < args.images:
            image = image[..., 0] if image.ndim == 3 else image
            stacks.append((kind, z_stack(image, labels, rng), t_stack(image, labels, rng)))
    print(f"# {len(stacks)} gray val images: {', '.join(kind for kind, *_ in stacks)}")
    print("model | along | true kept | pred pure | true objects/links | s per slice")
    for name in args.models:
        loaded = load_model(name, "cpu")
        segment = segment_semantic if loaded.info.task == "semantic" else segment_instances
        for along, position in (("z", 1), ("t", 2)):
            kept = total = pure = multi = 0
            seconds = slices = 0.0
            for stack in stacks:
                image, truth = stack[position]
                start = time.perf_counter()
                result = segment(image, loaded, link=along)
                seconds += time.perf_counter() - start
                slices += image.shape[0]
                labels = result.instances.labels if hasattr(result, "instances") else result.labels
                k, n, p, m = scores(truth, labels, along)
                kept, total, pure, multi = kept + k, total + n, pure + p, multi + m
            print(
                f"{name} | {along} | {kept / max(total, 1):.3f} | {pure / max(multi, 1):.3f} | "
                f"{total} | {seconds / slices:.2f}",
                flush=True,
            )
    if args.screenshot:
        save_screenshot(stacks[0][1], args.models[0], args.screenshot)
    return 0


def save_screenshot(z, model, path):
    """The first z-stack and its linked 3D objects in napari's 3D view."""
    import napari

    image, _ = z
    viewer = napari.Viewer(show=False)
    layer = viewer.add_image(image, name="z-stack", scale=(4, 1, 1), colormap="gray")
    from napari_instseg._widgets.segment import SemanticSegmentationWidget

    widget = SemanticSegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Semantic segmentation")
    widget.image_layer.value = layer
    widget.model.value = model
    widget.link.value = "z"
    for result in widget.run(blocking=True):
        result.visible = result.metadata["napari_instseg"]["kind"] == "instances"
    layer.visible = False
    viewer.window._qt_window.resize(1500, 900)
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = (0, -40, 60)
    viewer.camera.zoom *= 1.3
    viewer.screenshot(path, canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    raise SystemExit(main())

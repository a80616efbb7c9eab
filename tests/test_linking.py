"""Linking 2D instances through z and time (core.labels.linking), the engine's
``link=`` option and the CLI's ``--link``."""

import csv

import numpy as np
import pytest

from conftest import disc_image
from napari_instseg.core.labels.linking import (
    SliceLinker,
    check_link,
    link_stack,
    linked_object_table,
    tracks_table,
)
from napari_instseg.core.labels.postprocess import instance_result_from_labels, stack_instances
from napari_instseg.core.types import InputError

CLASSES = ["background", "nucleus"]


def _stack(slices) -> "InstanceResult":  # noqa: F821
    results = [instance_result_from_labels(s.astype(np.int32), CLASSES) for s in slices]
    return stack_instances(results, (len(slices),), slices[0].shape, CLASSES)


def _discs(shape, centres, radii):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, ((cy, cx), r) in enumerate(zip(centres, radii), start=1):
        if r > 0:
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = i
    return labels


def test_z_nuclei_shrinking_away_from_their_centre_keep_one_id_each():
    centres = [(12, 12), (12, 25), (30, 20)]  # the first two touch at their widest
    radii = np.array([6, 6, 7])
    slices = [_discs((48, 48), centres, np.maximum(radii - abs(z - 4), 0)) for z in range(9)]
    linked = link_stack(_stack(slices), "z")
    assert linked.metadata["link"]["objects"] == 3
    for i, centre in enumerate(centres):
        ids = {int(linked.labels[z][centre]) for z in range(9) if slices[z][centre]}
        assert len(ids) == 1, f"nucleus {i} split into {ids}"
    table = linked_object_table(linked, scale=(2.0, 0.5, 0.5))
    assert list(table["slices"]) == [9, 9, 9]
    np.testing.assert_allclose(table["volume_scaled"], table["volume"] * 0.5)
    assert list(table["first"]) == [0, 0, 0] and list(table["last"]) == [8, 8, 8]


def test_z_bridges_one_dim_slice_and_never_reuses_an_ended_id():
    a = _discs((32, 32), [(10, 10)], [5])
    empty = np.zeros_like(a)
    bridged = link_stack(_stack([a, empty, a]), "z")
    assert bridged.labels[0][10, 10] == bridged.labels[2][10, 10]
    ended = link_stack(_stack([a, empty, a]), "z", max_gap=0)
    assert ended.labels[0][10, 10] != ended.labels[2][10, 10]
    assert ended.metadata["link"]["objects"] == 2


def test_t_random_walks_keep_their_tracks():
    rng = np.random.default_rng(3)
    centres = rng.uniform(10, 90, (12, 2))
    while True:  # well separated, so that the truth is unambiguous
        d = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1))
        if (d + np.eye(len(d)) * 99).min() > 14:
            break
        centres = rng.uniform(10, 90, (12, 2))
    frames, truth = [], []
    for _ in range(15):
        centres = centres + rng.uniform(-2, 2, centres.shape)
        frames.append(_discs((100, 100), centres.round().astype(int), [4] * len(centres)))
        truth.append(centres.copy())
    linked = link_stack(_stack(frames), "t")
    assert linked.metadata["link"]["objects"] == 12
    tracks = linked.tracks
    assert tracks.shape == (12 * 15, 4)
    assert np.all(np.diff(tracks[:, 0]) >= 0)  # sorted by track, then frame
    for track in np.unique(tracks[:, 0]):
        rows = tracks[tracks[:, 0] == track]
        assert list(rows[:, 1]) == list(range(15))


def test_t_closes_a_gap_of_one_missed_frame_but_not_two():
    a = _discs((40, 40), [(20, 20)], [5])
    moved = _discs((40, 40), [(21, 21)], [5])
    empty = np.zeros_like(a)
    one_gap = link_stack(_stack([a, empty, moved]), "t")
    assert one_gap.labels[0][20, 20] == one_gap.labels[2][21, 21]
    assert one_gap.tracks.shape == (2, 4)
    two_gaps = link_stack(_stack([a, empty, empty, moved]), "t")
    assert two_gaps.labels[0][20, 20] != two_gaps.labels[3][21, 21]
    # a gap may be widened by the caller
    widened = link_stack(_stack([a, empty, empty, moved]), "t", max_gap=2)
    assert widened.labels[0][20, 20] == widened.labels[3][21, 21]


def test_t_links_by_centroid_distance_when_objects_no_longer_overlap():
    small = _discs((40, 40), [(20, 20)], [2])
    near = _discs((40, 40), [(20, 22)], [2])  # 2 px: within the default half diameter
    jumped = _discs((40, 40), [(20, 24)], [2])  # 4 px: no overlap, beyond it
    far = _discs((40, 40), [(20, 30)], [2])
    assert link_stack(_stack([small, near]), "t").metadata["link"]["objects"] == 1
    assert link_stack(_stack([small, jumped]), "t").metadata["link"]["objects"] == 2
    assert link_stack(_stack([small, far]), "t").metadata["link"]["objects"] == 2
    # the user may accept longer jumps
    assert link_stack(_stack([small, jumped]), "t", max_distance=5).metadata["link"]["objects"] == 1


def test_one_to_one_a_nucleus_that_splits_keeps_its_id_once():
    whole = _discs((40, 40), [(20, 20)], [8])
    halves = whole.copy()
    halves[:, 21:] *= 2  # left half keeps id 1, right half becomes id 2
    linked = link_stack(_stack([whole, halves]), "z", threshold=0.2)
    ids = np.unique(linked.labels[1])[1:]
    assert len(ids) == 2 and linked.labels[0][20, 20] in ids
    assert linked.metadata["link"]["objects"] == 2


def test_neighbours_are_not_swapped_when_one_moves_toward_the_other():
    frame0 = _discs((40, 60), [(20, 15), (20, 35)], [6, 6])
    frame1 = _discs((40, 60), [(20, 18), (20, 36)], [6, 6])
    linked = link_stack(_stack([frame0, frame1]), "t")
    assert linked.labels[0][20, 15] == linked.labels[1][20, 18]
    assert linked.labels[0][20, 35] == linked.labels[1][20, 36]


def test_the_linker_holds_only_the_previous_slice():
    linker = SliceLinker("t", max_gap=1)
    for k in range(20):
        linker.link(_discs((40, 40), [(10 + k, 20)], [3]) if k % 5 else np.zeros((40, 40), int))
        assert len(linker._active) <= 1
    linker = SliceLinker("z")
    linker.link(_discs((40, 40), [(10, 10), (30, 30)], [3, 3]))
    linker.link(np.zeros((40, 40), int))
    assert len(linker._active) == 2  # kept for one missed slice
    linker.link(np.zeros((40, 40), int))
    assert linker._active == {}


def test_tracks_table_is_napari_tracks_format():
    frames = [_discs((30, 30), [(10, 10 + k)], [4]) for k in range(3)]
    linked = link_stack(_stack(frames), "t")
    table = tracks_table(linked)
    np.testing.assert_allclose(table[:, :2], [[1, 0], [1, 1], [1, 2]])
    np.testing.assert_allclose(table[:, 2:], [[10, 10], [10, 11], [10, 12]], atol=1e-6)


@pytest.mark.parametrize(
    "link, stack_shape, message",
    [
        ("x", (3,), "must be 'z', 't'"),
        ("z", (), "a 2D image"),
        ("t", (2, 3), "one stack axis"),
    ],
)
def test_bad_link_requests_are_one_line_errors(link, stack_shape, message):
    with pytest.raises(InputError, match=message):
        check_link(link, stack_shape)
    assert check_link(None, (3,)) is None and check_link("none", ()) is None


def test_engine_links_a_stack_and_reports_it(oracle_unet):
    from napari_instseg.core.engine.predict import segment_semantic

    image, _ = disc_image((64, 64), [(20, 20), (40, 44)], 7)
    stack = np.stack([np.roll(image, k, axis=1) for k in range(5)])
    result = segment_semantic(stack, oracle_unet, link="t").instances
    assert result.metadata["link"]["objects"] == 2
    assert len(result) == 10 and len(np.unique(result.label_ids)) == 2
    assert result.tracks.shape == (10, 4)
    with pytest.raises(InputError, match="one stack axis"):
        segment_semantic(image, oracle_unet, link="z")


def test_cli_link_writes_objects_and_tracks(tmp_path, tiny_unet_path):
    import tifffile

    from napari_instseg.cli import main

    image, _ = disc_image((64, 64), [(20, 20), (40, 44)], 7)
    stack = (np.stack([np.roll(image, k, axis=1) for k in range(4)]) * 200).astype(np.uint8)
    tifffile.imwrite(tmp_path / "movie.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "movie.tif"), "--model", str(tiny_unet_path),
                 "--link", "t", "-o", str(out)]) == 0  # fmt: skip
    with open(out / "movie_tracks.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["track_id", "t", "y", "x"]
    with open(out / "movie_objects.csv") as f:
        header = next(csv.reader(f))
    assert {"label_id", "first", "last", "volume", "centroid_y"} <= set(header)


def test_linking_a_long_movie_streams_without_copying_it():
    """In place (as the engine links), a 400-frame movie's linking holds a
    few frames of intermediate data beyond its labels (100 int64 frames'
    worth), whatever its length."""
    import tracemalloc

    frame = _discs((128, 128), [(30, 30), (60, 90), (100, 40)], [8, 10, 6]).astype(np.uint16)
    shifts = [abs(k % 40 - 20) for k in range(400)]  # back and forth, 1 px per frame
    movie = _stack([np.roll(frame, shift, axis=1) for shift in shifts])
    frame_bytes = frame.size * 8  # an int64 frame: the largest per-frame array used
    tracemalloc.start()
    linked = link_stack(movie, "t", copy=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert linked.metadata["link"]["objects"] == 3
    assert peak < 10 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames"


def test_object_table_counts_a_linked_objects_area_per_slice():
    from napari_instseg.core.io.tables import object_table

    slices = [_discs((30, 30), [(15, 15)], [r]) for r in (3, 5, 3)]
    linked = link_stack(_stack(slices), "z")
    table = object_table(linked)
    assert list(table["label_id"]) == [1, 1, 1]
    assert list(table["area"]) == [int((s > 0).sum()) for s in slices]

"""Block-wise segmentation (core.blockwise): seams, a LocalCluster, a killed worker."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from conftest import disc_image
from napari_instseg._sample_data import load_sample
from napari_instseg.core.blockwise.blocks import (
    BLOCK_CHOICES,
    choose_block_size,
    plan_blocks,
    segment_blockwise,
)
from napari_instseg.core.blockwise.painting import BlockObject, keep_objects, paint_regions
from napari_instseg.core.engine.predict import segment_semantic
from napari_instseg.core.engine.tiling import fitted_tile_grid, window_tile_grid
from napari_instseg.core.labels.metrics import iou_matrix
from napari_instseg.core.labels.postprocess import boxes_from_labels
from napari_instseg.core.types import InputError


def _one_to_one(a, b) -> tuple[float, float]:
    iou = iou_matrix(a, b)
    return (iou.max(1) > 0.5).mean(), (iou.max(0) > 0.5).mean()


def test_blocks_cover_the_image_once():
    blocks = plan_blocks(300, 200, 128, 20)
    owned = np.zeros((300, 200), int)
    for block in blocks:
        y0, x0, y1, x1 = block.core
        owned[y0:y1, x0:x1] += 1
        assert block.read[0] == max(0, y0 - 20) and block.read[3] == min(200, x1 + 20)
    assert (owned == 1).all()


def _read_pixels(blocks) -> list[int]:
    return [(b.read[2] - b.read[0]) * (b.read[3] - b.read[1]) for b in blocks]


def test_the_chosen_block_size_finishes_soonest():
    tiling = (512, 64)  # the bundled U-Net's
    # an 8192^2 image: 2048 px blocks read 1.39x its pixels (a tile's widening
    # a side), 4096 px blocks 1.12x; one or two workers take the larger ones
    for workers in (1, 2):
        assert choose_block_size(8192, 8192, workers, 128, tiling) == 4096
    assert sum(_read_pixels(plan_blocks(8192, 8192, 2048, 128, tiling))) > 1.35 * 8192**2
    assert sum(_read_pixels(plan_blocks(8192, 8192, 4096, 128, tiling))) < 1.15 * 8192**2
    # many workers: smaller blocks, so that every worker has some
    assert choose_block_size(8192, 8192, 16, 128, tiling) < 4096

    def reads(block):
        return _read_pixels(plan_blocks(3000, 5000, block, 128, tiling))

    # one worker reads every block: the least pixels in all win
    chosen = choose_block_size(3000, 5000, 1, 128, tiling)
    assert sum(reads(chosen)) <= 1.02 * min(sum(reads(b)) for b in BLOCK_CHOICES)
    # a worker per block: the smallest largest block wins
    chosen = choose_block_size(3000, 5000, 64, 128, tiling)
    assert max(reads(chosen)) <= 1.02 * min(max(reads(b)) for b in BLOCK_CHOICES)


def test_aligned_read_windows_are_whole_tiles_of_the_whole_image():
    tile, overlap = 96, 16
    whole = fitted_tile_grid(700, 500, tile, overlap)
    for block in plan_blocks(700, 500, 160, 24, (tile, overlap)):
        y0, x0, y1, x1 = block.core
        ry0, rx0, ry1, rx1 = block.read
        assert ry0 <= max(0, y0 - 24) and rx0 <= max(0, x0 - 24)
        assert ry1 >= min(700, y1 + 24) and rx1 >= min(500, x1 + 24)
        grid = window_tile_grid((700, 500), (ry0, rx0), (ry1 - ry0, rx1 - rx0), tile, overlap)
        windows = {(t.y0 + ry0, t.x0 + rx0, t.y1 + ry0, t.x1 + rx0) for t in grid}
        inside = {
            (t.y0, t.x0, t.y1, t.x1)
            for t in whole
            if t.y0 >= ry0 and t.y1 <= ry1 and t.x0 >= rx0 and t.x1 <= rx1
        }
        assert windows == inside  # the whole image's tiles, nothing else


def test_a_window_off_the_tile_grid_gets_its_own_tiles():
    grid = window_tile_grid((700, 500), (7, 0), (300, 500), 96, 16)
    assert grid == fitted_tile_grid(300, 500, 96, 16)


def test_blocks_predict_exactly_as_the_whole_image():
    """Shared intensity range and the whole image's tiles: every object of
    the block-wise result is pixel for pixel the single-process one."""
    image = load_sample("nuclei")
    single = segment_semantic(image, "nuclei-unet", tile_size=128).instances
    blocks = segment_blockwise(image, "nuclei-unet", block_size=160, halo=48, tile_size=128)
    iou = iou_matrix(single.labels, blocks.labels)
    assert len(blocks) == len(single) > 50
    assert (iou.max(1) > 0.999).all() and (iou.max(0) > 0.999).all()


def test_painting_region_by_region_equals_painting_at_once():
    rng = np.random.default_rng(3)
    objects = [
        BlockObject(int(y), int(x), rng.random((h, w)) > 0.3, float(s), 1)
        for y, x, h, w, s in zip(
            rng.integers(0, 180, 60), rng.integers(0, 230, 60), rng.integers(3, 20, 60),
            rng.integers(3, 20, 60), rng.random(60),
        )
    ]  # fmt: skip
    kept = keep_objects(objects)
    assert 0 < len(kept) < len(objects)  # overlapping ones were dropped
    whole, boxes, areas = paint_regions((200, 250), kept, [(0, 0, 200, 250)])
    regions = [(y, x, min(200, y + 64), min(250, x + 64)) for y in range(0, 200, 64)
               for x in range(0, 250, 64)]  # fmt: skip
    stored = {}

    def make_labels(shape, dtype):
        stored["array"] = np.full(shape, 7, dtype)  # stands for a zarr array: every pixel set
        return stored["array"]

    parts, boxes2, areas2 = paint_regions((200, 250), kept, regions, make_labels)
    assert parts is stored["array"]
    np.testing.assert_array_equal(parts, whole)
    np.testing.assert_array_equal(boxes, boxes2)
    np.testing.assert_array_equal(boxes, boxes_from_labels(whole, np.arange(1, len(kept) + 1)))
    np.testing.assert_array_equal(areas, np.bincount(whole.ravel(), minlength=len(kept) + 1)[1:])


def test_a_stack_goes_slice_by_slice_with_ids_unique_through_it():
    stack = np.stack([IMAGE, np.roll(IMAGE, 40, axis=1)])
    result = segment_blockwise(stack, "nuclei-unet", block_size=128, tile_size=128)
    single = segment_semantic(stack, "nuclei-unet", tile_size=128).instances
    assert result.labels.shape == stack.shape and len(result) == len(single)
    assert len(np.unique(result.labels)) - 1 == len(result)  # no id in two slices
    for z in range(2):
        rows = result.stack_index == z
        assert set(np.unique(result.labels[z])) - {0} == set(result.label_ids[rows])
        iou = iou_matrix(single.labels[z], result.labels[z])
        assert (iou.max(1) > 0.999).all() and (iou.max(0) > 0.999).all()


def test_block_wise_refuses_what_changes_scale_or_axes(tmp_path):
    with pytest.raises(InputError, match="diameter"):
        segment_blockwise(IMAGE, "nuclei-unet", diameter=20)
    with pytest.raises(InputError, match="link"):
        segment_blockwise(IMAGE, "nuclei-unet", link="z")
    with pytest.raises(InputError, match="gray"):
        segment_blockwise(np.stack([IMAGE] * 3, -1), "nuclei-unet")
    (tmp_path / "done.zarr").mkdir()
    with pytest.raises(InputError, match="exists"):  # at once, not after the work
        segment_blockwise(IMAGE, "nuclei-unet", labels_to=tmp_path / "done.zarr")


def test_objects_on_every_block_edge_get_one_id_each(oracle_unet):
    block = 64
    edges = [block * k for k in range(1, 4)]
    centres = [(y, x) for y in edges for x in edges]  # every corner where four blocks meet
    centres += [(y, x + 32) for y in edges for x in (0, 64, 128)]  # along horizontal edges
    centres += [(y + 32, x) for y in (0, 64, 128) for x in edges]  # along vertical edges
    image, truth = disc_image((256, 256), centres, 6)
    blockwise = segment_blockwise(image, oracle_unet, block_size=block, halo=24)
    single = segment_semantic(image, oracle_unet).instances
    assert len(blockwise) == len(centres) == len(single)
    assert _one_to_one(truth, blockwise.labels) == (1.0, 1.0)
    assert _one_to_one(single.labels, blockwise.labels) == (1.0, 1.0)
    assert set(np.unique(blockwise.labels)) == set(range(len(centres) + 1))


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    from napari_instseg.core.blockwise.local_cluster import start_local_cluster

    with (
        start_local_cluster(2, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_our_workers_run_without_dasks_malloc_setting(client):
    """dask's nanny sets MALLOC_TRIM_THRESHOLD_, which made the U-Net 1.6x
    slower in a worker; ours go without it, and a cluster started with dask's
    defaults is told apart (the command line then says how to fix it)."""
    import distributed

    from napari_instseg.core.blockwise.local_cluster import slowed_workers

    assert slowed_workers(client) == 0
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as plain:  # fmt: skip
        assert slowed_workers(plain) == 1


def test_local_without_a_count_takes_a_worker_per_core_as_memory_allows():
    from napari_instseg.commands.cluster import parse_cluster
    from napari_instseg.core.blockwise.local_cluster import WORKER_MEMORY, default_local_workers

    assert default_local_workers(cores=8, free=64 * 2**30) == 8
    assert default_local_workers(cores=8, free=3 * WORKER_MEMORY + 1) == 3
    assert default_local_workers(cores=8, free=0) == 1
    assert parse_cluster("local") == default_local_workers()
    assert parse_cluster("local:3") == 3


IMAGE = load_sample("nuclei")[:256, :384]


def test_local_cluster_gives_the_blocks_result(client):
    local = segment_blockwise(IMAGE, "nuclei-unet", block_size=128, halo=64)
    on_cluster = segment_blockwise(IMAGE, "nuclei-unet", block_size=128, halo=64, client=client)
    np.testing.assert_array_equal(local.labels, on_cluster.labels)
    single = segment_semantic(IMAGE, "nuclei-unet").instances
    assert min(_one_to_one(single.labels, on_cluster.labels)) >= 0.95


def test_a_worker_killed_mid_run_changes_nothing(client):
    reference = segment_blockwise(IMAGE, "nuclei-unet", block_size=64, halo=48, client=client)
    pids = client.run(os.getpid)
    out = {}
    run = threading.Thread(
        target=lambda: out.update(
            result=segment_blockwise(IMAGE, "nuclei-unet", block_size=64, halo=48, client=client)
        )
    )
    run.start()
    deadline = time.time() + 30
    while time.time() < deadline and not any(client.processing().values()):
        time.sleep(0.05)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    run.join(timeout=240)
    assert not run.is_alive() and "result" in out
    np.testing.assert_array_equal(out["result"].labels, reference.labels)


def test_cluster_mode_runs_a_folder_as_one_task_per_file(tmp_path, capsys):
    import tifffile

    from napari_instseg.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        tifffile.imwrite(folder / f"f{k}.tif", np.roll(IMAGE[:128, :128], 16 * k, axis=1))
    (folder / "bad.tif").write_bytes(b"not a tiff")
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--cluster", "local:2", "-o", str(out)])
    assert code == 1  # the bad file fails alone, with one line
    err = capsys.readouterr().err
    assert "bad.tif" in err and "dashboard" in err and "Traceback" not in err
    for k in range(3):
        labels = tifffile.imread(out / f"f{k}_labels.tif")
        expected = segment_semantic(
            np.roll(IMAGE[:128, :128], 16 * k, axis=1), "nuclei-unet"
        ).instances.labels
        np.testing.assert_array_equal(labels, expected)


def test_a_zarr_input_on_a_cluster_writes_its_labels_block_by_block(client, tmp_path, capsys):
    import csv

    import zarr

    from napari_instseg.cli import main

    source = tmp_path / "big.zarr"
    zarr.create_array(str(source), shape=IMAGE.shape, chunks=(128, 128), dtype=IMAGE.dtype)[:] = (
        IMAGE
    )
    out = tmp_path / "out"
    address = client.scheduler.address
    args = ["predict", str(source), "--scheduler", address, "--block-size", "128", "-o", str(out)]
    assert main(args) == 0
    labels = zarr.open_group(str(out / "big_labels.zarr"), mode="r")["0"][:]
    assert not (out / "big_labels.zarr.partial").exists()
    expected = segment_blockwise(IMAGE, "nuclei-unet", block_size=128)
    np.testing.assert_array_equal(labels, expected.labels)
    with open(out / "big_boxes.csv") as f:
        rows = list(csv.DictReader(f))
    boxes = [[int(r[k]) for k in ("y_min", "x_min", "y_max", "x_max")] for r in rows]
    np.testing.assert_array_equal(boxes, expected.boxes)
    assert len(rows) == labels.max() == len(expected)

    capsys.readouterr()
    assert main([*args[:-2], "--diameter", "20", "-o", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "do not take --diameter" in err and "Traceback" not in err


@pytest.mark.parametrize("stop_at", ["segmenting blocks", "writing labels"])
def test_cancelling_leaves_no_labels_file(tmp_path, stop_at):
    from napari_instseg.core.types import Cancelled

    target = tmp_path / "labels.zarr"
    seen = []

    def cancel():
        return bool(seen) and seen[-1] == stop_at

    with pytest.raises(Cancelled):
        segment_blockwise(
            IMAGE, "nuclei-unet", block_size=128, labels_to=target,
            progress=lambda step: seen.append(step.message), cancel=cancel,
        )  # fmt: skip
    assert not target.exists() and not (tmp_path / "labels.zarr.partial").exists()


def test_intensity_range_fixes_the_normalisation_and_is_checked():
    from napari_instseg.core.blockwise.blocks import whole_image_range
    from napari_instseg.core.models.loading import load_model

    own = whole_image_range(IMAGE, load_model("nuclei-unet", "cpu").info)
    plain = segment_semantic(IMAGE, "nuclei-unet").instances
    fixed = segment_semantic(IMAGE, "nuclei-unet", intensity_range=own).instances
    np.testing.assert_array_equal(plain.labels, fixed.labels)  # its own range: the same
    darker = segment_semantic(IMAGE, "nuclei-unet", intensity_range=(0, 4 * own[1][0])).instances
    assert not np.array_equal(plain.labels, darker.labels)  # the range is what is used
    for wrong in [(5, 1), (0, float("nan")), (0, 1, 2), "bright"]:
        with pytest.raises(InputError, match="intensity range"):
            segment_semantic(IMAGE, "nuclei-unet", intensity_range=wrong)

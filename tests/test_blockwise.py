"""Block-wise segmentation (core.blockwise): seams, a LocalCluster, a killed worker."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from conftest import disc_image
from napari_instseg._sample_data import load_sample
from napari_instseg.core.blockwise import plan_blocks, segment_blockwise
from napari_instseg.core.metrics import iou_matrix
from napari_instseg.core.predict import segment_semantic


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
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        yield client


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

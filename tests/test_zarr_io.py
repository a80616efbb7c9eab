"""OME-Zarr and zarr in, OME-Zarr label images out (core.io.zarr_io, CLI)."""

import os

import numpy as np
import pytest
import tifffile
import zarr

from napari_instseg._sample_data import load_sample
from napari_instseg.cli import main
from napari_instseg.core.io.zarr_io import open_zarr_image, write_label_image
from napari_instseg.core.types import InputError

IMAGE = load_sample("nuclei")[:160, :200]


def _ome_zarr(path, image, axes=("y", "x"), scale=(0.5, 0.25)):
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    array = group.create_array("0", shape=image.shape, chunks=(64, 64), dtype=image.dtype)
    array[...] = image
    scale_transform = {"type": "scale", "scale": list(scale)}
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space"} for a in axes],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [scale_transform],
                }
            ],
        }
    ]
    return path


def test_ome_zarr_in_gives_an_ome_zarr_label_image_like_the_tiff_result(tmp_path):
    _ome_zarr(tmp_path / "S.zarr", IMAGE)
    tifffile.imwrite(tmp_path / "T.tif", IMAGE)
    args = ["--model", "nuclei-unet", "-o", str(tmp_path / "out")]
    assert main(["predict", str(tmp_path / "S.zarr"), *args]) == 0
    assert main(["predict", str(tmp_path / "T.tif"), *args]) == 0
    out = zarr.open_group(str(tmp_path / "out" / "S_labels.zarr"), mode="r")
    (multiscale,) = out.attrs["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["y", "x"]
    assert multiscale["datasets"][0]["path"] == "0"
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.25]
    assert "image-label" in out.attrs
    labels = out["0"]
    assert labels.dtype == np.uint16 and labels.chunks == (160, 200)
    np.testing.assert_array_equal(labels[...], tifffile.imread(tmp_path / "out" / "T_labels.tif"))
    assert (tmp_path / "out" / "S_boxes.csv").exists()
    assert not list((tmp_path / "out").glob("*.partial"))
    # an output that exists is refused with one line; the other files carry on
    assert main(["predict", str(tmp_path / "S.zarr"), *args]) == 1


def test_plain_zarr_array_and_tiff_to_zarr(tmp_path):
    array = zarr.create_array(str(tmp_path / "plain.zarr"), shape=IMAGE.shape, dtype=IMAGE.dtype)
    array[...] = IMAGE
    tifffile.imwrite(tmp_path / "t.tif", IMAGE)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "plain.zarr"), "-o", str(out)]) == 0
    assert (
        main(["predict", str(tmp_path / "t.tif"), "--output-format", "zarr", "-o", str(out)]) == 0
    )
    for stem in ("plain", "t"):
        group = zarr.open_group(str(out / f"{stem}_labels.zarr"), mode="r")
        assert group["0"].shape == IMAGE.shape and group["0"][...].max() > 3


def test_bad_zarr_stores_are_one_line_errors(tmp_path):
    huge = zarr.create_array(str(tmp_path / "huge.zarr"), shape=(2**31, 2**31), dtype="uint16")
    assert huge.shape[0] == 2**31
    with pytest.raises(InputError, match="implausible shape"):
        open_zarr_image(tmp_path / "huge.zarr")
    zarr.create_array(str(tmp_path / "c.zarr"), shape=(8, 8), dtype="complex64")
    with pytest.raises(InputError, match="unsupported pixel type"):
        open_zarr_image(tmp_path / "c.zarr")
    broken = zarr.create_array(
        str(tmp_path / "b.zarr"), shape=(64, 64), chunks=(32, 32), dtype="uint8",
        fill_value=None, zarr_format=2,
    )  # fmt: skip
    broken[...] = 1
    os.remove(tmp_path / "b.zarr" / "0.1")
    with pytest.raises(InputError, match="1 of its 4 chunks are missing"):
        open_zarr_image(tmp_path / "b.zarr")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(InputError, match="without OME-Zarr multiscales"):
        open_zarr_image(tmp_path / "g.zarr")
    assert group is not None
    with pytest.raises(InputError, match="no such zarr store"):
        open_zarr_image(tmp_path / "missing.zarr")


def test_label_writer_never_leaves_a_half_written_output(tmp_path):
    target = tmp_path / "x_labels.zarr"
    (tmp_path / "x_labels.zarr.partial").mkdir()  # left by an interrupted run
    write_label_image(target, np.ones((3, 40, 50), np.uint32), ["z", "y", "x"], [2.0, 0.5, 0.5])
    group = zarr.open_group(str(target), mode="r")
    assert group["0"].chunks == (1, 40, 50)
    assert [a["name"] for a in group.attrs["multiscales"][0]["axes"]] == ["z", "y", "x"]
    assert not (tmp_path / "x_labels.zarr.partial").exists()
    with pytest.raises(InputError, match="exists"):
        write_label_image(target, np.ones((40, 50), np.uint16))


def test_skip_existing_resumes_a_batch_and_a_bad_file_does_not_stop_it(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(folder / f"{name}.tif", IMAGE)
    (folder / "c.tif").write_bytes(b"not a tiff")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-o", str(out)]) == 1  # c.tif fails alone
    assert (out / "a_boxes.csv").exists() and (out / "b_boxes.csv").exists()
    (out / "b_boxes.csv").unlink()  # as if interrupted while writing b
    before = (out / "a_labels.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["predict", str(folder), "-o", str(out), "--skip-existing"]) == 1
    assert "a.tif: done before (skipped)" in capsys.readouterr().err
    assert (out / "a_labels.tif").stat().st_mtime_ns == before
    assert (out / "b_boxes.csv").exists()


def test_a_declared_huge_zarr_gets_a_plan_or_a_refusal_before_any_work(
    tmp_path, tiny_unet_path, capsys, monkeypatch
):
    """A store that declares 10^6 x 10^6 pixels (no chunk written): one line
    of plan and a refusal naming the fix, in well under 5 s, no pixel read."""
    import time

    from napari_instseg.core.engine import predict

    huge = zarr.open_array(
        str(tmp_path / "slide.zarr"), mode="w", shape=(10**6, 10**6), chunks=(1024, 1024),
        dtype="uint16", zarr_format=2,
    )  # fmt: skip
    del huge
    touched = []
    monkeypatch.setattr(predict, "segment", lambda *a, **k: touched.append(1))
    start = time.perf_counter()
    code = main(["predict", str(tmp_path / "slide.zarr"), "--model", str(tiny_unet_path),
                 "-o", str(tmp_path / "out")])  # fmt: skip
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code != 0 and not touched and seconds < 5
    plan = next(line for line in err.splitlines() if "slide.zarr: 1.0 Tpx" in line)
    assert "1000000 x 1000000 uint16" in plan and "labels up to 4.0 TB" in plan
    assert "days" in plan and "slide_labels.zarr" in plan
    assert "error:" in err and "--cluster local" in err and "free" in err


def test_plans_say_time_size_and_where_the_labels_go():
    from napari_instseg.core.blockwise.sizing import plan_run

    plan = plan_run((8192, 8192), "uint16", "semantic", threads=2, labels_in_memory=True,
                    destination="out/big_labels.tif")  # fmt: skip
    assert plan.pixels == 8192**2 and plan.label_bytes == 4 * 8192**2
    assert 60 < plan.seconds < 100  # about 1.1 s per megapixel with 2 threads
    assert plan.refusal() is None and "out/big_labels.tif" in plan.describe()
    rgb = plan_run((2000, 3000, 3), "uint8", "instance", threads=2)
    assert rgb.shape == (2000, 3000) and rgb.input_bytes == 2000 * 3000 * 3
    stack = plan_run((5, 2, 100, 100), "float32", "semantic", channel_axis=1, workers=2)
    assert stack.shape == (5, 100, 100)
    blockwise = plan_run((10**6, 10**6), "uint16", "semantic", labels_in_memory=False)
    assert blockwise.refusal() is None  # written block by block: nothing held whole

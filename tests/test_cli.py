"""The napari-instseg command line, in-process and as the installed script."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import disc_image
from napari_instseg.cli import main


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_console_script_is_installed():
    # the script sits beside the interpreter (a venv's bin/ need not be on PATH)
    exe = shutil.which("napari-instseg", path=str(Path(sys.executable).parent))
    assert exe, "console script missing"
    out = subprocess.run([exe, "models"], capture_output=True, text=True, check=True).stdout
    for name in ("nuclei-unet", "nuclei-maskrcnn", "coco-maskrcnn"):
        assert name in out


def test_predict_semantic_writes_labels_boxes_and_classes(tmp_path, tiny_unet_path):
    image = (np.random.rand(3, 60, 70) * 4000).astype(np.uint16)  # a z-stack
    tifffile.imwrite(tmp_path / "stack.tif", image)
    tifffile.imwrite(tmp_path / "plain.tif", image[0])
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path), "--model", str(tiny_unet_path), "-o", str(out)]) == 0
    labels = tifffile.imread(out / "stack_labels.tif")
    assert labels.shape == (3, 60, 70)
    assert tifffile.imread(out / "stack_semantic.tif").shape == (3, 60, 70)
    rows = _read_csv(out / "stack_boxes.csv")
    assert len(rows) == len(np.unique(labels)) - 1
    header = (out / "stack_boxes.csv").read_text().splitlines()[0]
    assert header.startswith("stack_index,label_id,")
    header = (out / "plain_boxes.csv").read_text().splitlines()[0]
    assert header == "label_id,class_id,class_name,score,y_min,x_min,y_max,x_max"


def test_predict_instances_with_maskrcnn_checkpoint(tmp_path, tiny_maskrcnn_path):
    tifffile.imwrite(tmp_path / "a.tif", np.random.rand(64, 64).astype(np.float32))
    code = main(
        [
            "predict",
            str(tmp_path / "a.tif"),
            "--model",
            str(tiny_maskrcnn_path),
            "-o",
            str(tmp_path),
            "--score-threshold",
            "0",
        ]
    )
    assert code == 0
    labels = tifffile.imread(tmp_path / "a_labels.tif")
    rows = _read_csv(tmp_path / "a_boxes.csv")
    assert len(rows) == len(np.unique(labels)) - 1


def _spy_on(monkeypatch, function: str) -> dict:
    """The keyword arguments of the latest call of ``core.engine.predict.<function>``."""
    from napari_instseg.core.engine import predict

    seen = {}
    segment = getattr(predict, function)

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return segment(*args, **kwargs)

    monkeypatch.setattr(predict, function, spy)
    return seen


def test_predict_passes_both_detection_thresholds(tmp_path, tiny_maskrcnn_path, monkeypatch):
    seen = _spy_on(monkeypatch, "segment_instances")
    tifffile.imwrite(tmp_path / "a.tif", np.random.rand(48, 48).astype(np.float32))
    args = ["predict", str(tmp_path / "a.tif"), "--model", str(tiny_maskrcnn_path)]
    assert main([*args, "-o", str(tmp_path)]) == 0
    assert seen["score_threshold"] is None and seen["mask_threshold"] is None  # model's own
    args += ["-o", str(tmp_path), "--score-threshold", "0.2", "--mask-threshold", "0.3"]
    assert main(args) == 0
    assert seen["score_threshold"] == 0.2 and seen["mask_threshold"] == 0.3


def test_bad_inputs_are_one_line_errors_and_the_rest_still_runs(tmp_path, tiny_unet_path, capsys):
    tifffile.imwrite(tmp_path / "good.tif", np.random.rand(40, 40).astype(np.float32))
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    (tmp_path / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(tmp_path),
            str(tmp_path / "missing.tif"),
            "--model",
            str(tiny_unet_path),
            "-o",
            str(out),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "Traceback" not in "".join(err)
    assert (out / "good_labels.tif").exists()


def test_unknown_model_lists_known_ones(capsys, tmp_path):
    assert main(["predict", "x.tif", "--model", "nope", "-o", str(tmp_path)]) == 1
    assert "known models: nuclei-unet" in capsys.readouterr().err


def test_pickle_checkpoint_is_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x04cos\nsystem\n.")
    assert main(["predict", "x.tif", "--model", str(evil), "-o", str(tmp_path)]) == 1
    assert "refused" in capsys.readouterr().err


def test_evaluate_prints_table_and_json(tmp_path, capsys):
    truth_img, truth = disc_image((64, 64), [(15, 15), (45, 45)], 6)
    pred = truth.copy()
    pred[pred == 2] = 0
    tifffile.imwrite(tmp_path / "gt.tif", truth)
    tifffile.imwrite(tmp_path / "pred_labels.tif", pred)
    report = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "gt.tif"),
                str(tmp_path / "pred_labels.tif"),
                "--json",
                str(report),
            ]
        )
        == 0
    )
    data = json.loads(report.read_text())
    assert data["ap"][0] == pytest.approx(0.5) and data["n_true"] == 2 and data["n_pred"] == 1
    assert "0.50" in capsys.readouterr().out


@pytest.mark.gui
def test_demo_saves_a_screenshot_of_the_window(tmp_path, qapp):
    # qapp: pytest-qt's fixture, so pytest-xvfb's display is set for the child
    exe = shutil.which("napari-instseg", path=str(Path(sys.executable).parent))
    shot = tmp_path / "demo.png"
    proc = subprocess.run(
        [exe, "demo", "--screenshot", str(shot)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    from skimage import io

    height, width = io.imread(shot).shape[:2]
    assert width >= 1200 and height >= 700


def test_inputs_with_the_same_name_do_not_overwrite_each_other(tmp_path, tiny_unet_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "x.tif", np.random.rand(20, 20).astype(np.float32))
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--model",
            str(tiny_unet_path),
            "-o",
            str(out),
        ]
    )
    assert code == 1
    assert "same name as" in capsys.readouterr().err
    assert (out / "x_labels.tif").exists()


@pytest.mark.parametrize("thresholds", ["0.5,abc", "0,0.5", "1.5"])
def test_evaluate_rejects_bad_thresholds(tmp_path, thresholds, capsys):
    labels = np.zeros((10, 10), np.uint16)
    tifffile.imwrite(tmp_path / "gt.tif", labels)
    code = main(
        ["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "gt.tif"), "--thresholds", thresholds]
    )
    assert code == 1 and "--thresholds" in capsys.readouterr().err


def test_outputs_get_ordinary_file_permissions(tmp_path, tiny_unet_path):
    import os
    import stat

    tifffile.imwrite(tmp_path / "a.tif", np.random.rand(20, 20).astype(np.float32))
    assert (
        main(
            [
                "predict",
                str(tmp_path / "a.tif"),
                "--model",
                str(tiny_unet_path),
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "out" / "a_labels.tif").stat().st_mode)
    assert mode == 0o666 & ~umask  # not mkstemp's private 0600


def test_predict_passes_diameter_and_augment(tmp_path, tiny_unet_path, monkeypatch, capsys):
    seen = _spy_on(monkeypatch, "segment_semantic")
    tifffile.imwrite(tmp_path / "a.tif", np.random.rand(48, 48).astype(np.float32))
    args = ["predict", str(tmp_path / "a.tif"), "--model", str(tiny_unet_path), "-o", str(tmp_path)]
    assert main(args) == 0
    assert seen["diameter"] is None and seen["augment"] is False
    # the tiny model stores no trained diameter: a one-line error, no traceback
    assert main([*args, "--diameter", "auto", "--augment"]) == 1
    assert seen["diameter"] == "auto" and seen["augment"] is True
    assert "does not store the object diameter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--diameter", "wide"])

"""The wheel is the whole plugin: code, manifest, bundled weights and samples."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_weights_manifest_and_samples(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
    )
    (wheel,) = tmp_path.glob("napari_instseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "napari_instseg/napari.yaml",
        "napari_instseg/weights/nuclei-unet.safetensors",
        "napari_instseg/weights/nuclei-maskrcnn.safetensors",
        "napari_instseg/weights/nuclei-maskrcnn.metadata.json",
        "napari_instseg/samples/nuclei.tif",
        "napari_instseg/samples/nuclei-histology.tif",
    }
    assert expected <= names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Framework :: napari" in text and "Provides-Extra: bioimageio" in text
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "napari.manifest" in zipfile.ZipFile(wheel).read(entry_points).decode()

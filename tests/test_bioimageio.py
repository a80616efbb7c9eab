"""bioimage.io packages: export (checked by bioimageio.core), import, round
trip, and hostile packages refused with one-line errors."""

import io
import pickle
import zipfile

import numpy as np
import pytest
import yaml

pytest.importorskip("bioimageio.core")

from napari_instseg._sample_data import load_sample  # noqa: E402
from napari_instseg.core.engine.predict import segment_semantic  # noqa: E402
from napari_instseg.core.models.loading import clear_model_cache, load_model  # noqa: E402
from napari_instseg.core.types import ModelError  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from napari_instseg.core.models.bioimageio_export import export_bioimageio

    path = tmp_path_factory.mktemp("bioimageio") / "nuclei-unet.zip"
    return export_bioimageio("nuclei-unet", path)


def _rewrite(package, target, change_rdf=None, replace=None):
    """A copy of ``package`` with its rdf.yaml changed and members replaced."""
    replace = replace or {}
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(target, "w") as dst:
        for member in src.infolist():
            data = replace.get(member.filename, src.read(member.filename))
            if member.filename == "rdf.yaml" and change_rdf is not None:
                rdf = yaml.safe_load(data)
                change_rdf(rdf)
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(member.filename, data)
    return target


def test_exported_unet_passes_bioimageio_test(package):
    from bioimageio.core import test_model

    names = set(zipfile.ZipFile(package).namelist())
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "unet_architecture.py",
            "test_input.npy", "test_output.npy", "cover.png", "README.md"} <= names  # fmt: skip
    summary = test_model(package)
    assert summary.status == "passed", summary.format()
    rdf = yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))
    assert rdf["license"] == "BSD-3-Clause" and len(rdf["cite"]) == 2
    assert "scale_range" in [step["id"] for step in rdf["inputs"][0]["preprocessing"]]


def test_our_package_gives_the_same_labels_as_its_model(package):
    image = load_sample("nuclei")[:200, :240]
    direct = segment_semantic(image, "nuclei-unet").instances.labels
    through_package = segment_semantic(image, str(package)).instances.labels
    np.testing.assert_array_equal(direct, through_package)


def test_cli_export_and_predict_with_a_package(package, tmp_path):
    import tifffile

    from napari_instseg.cli import main

    tifffile.imwrite(tmp_path / "a.tif", load_sample("nuclei")[:128, :128])
    assert main(["predict", str(tmp_path / "a.tif"), "--model", str(package),
                 "-o", str(tmp_path / "out")]) == 0  # fmt: skip
    assert (tmp_path / "out" / "a_labels.tif").exists()
    assert main(["export-bioimageio", "nuclei-maskrcnn", "-o", str(tmp_path / "m.zip")]) == 1
    assert main(["export-bioimageio", "nuclei-unet", "-o", str(package)]) == 1  # exists


def test_mask_rcnn_export_says_why_not():
    from napari_instseg.core.models.bioimageio_export import export_bioimageio

    with pytest.raises(ModelError, match="paste masks into boxes"):
        export_bioimageio("nuclei-maskrcnn", "/nonexistent/m.zip")


def test_zip_slip_is_refused(package, tmp_path):
    hostile = tmp_path / "slip.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(hostile, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        dst.writestr("../../escaped.txt", b"outside")
    with pytest.raises(ModelError, match="escapes the package folder"):
        load_model(str(hostile))
    assert not (tmp_path.parent / "escaped.txt").exists()


class _Payload:
    """Unpickling this writes a file: what a hostile weights file could do."""

    target = ""

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_objects_in_weights_are_refused(package, tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    evil = io.BytesIO()
    pickle.dump({"unet.head.weight": _Payload()}, evil)
    hostile = _rewrite(package, tmp_path / "pickle.zip", replace={"weights.pt": evil.getvalue()})
    with pytest.raises(ModelError, match="refused: its weights are not a plain state dict"):
        load_model(str(hostile))
    assert not (tmp_path / "pwned").exists()


def _foreign(rdf, keep):
    rdf.pop("config", None)
    rdf["name"] = "SomeoneElsesUNet"
    weights = rdf["weights"]
    for name in list(weights):
        if name != keep:
            weights.pop(name)
    weights[keep].pop("parent", None)


def test_foreign_architecture_code_runs_only_when_trusted(package, tmp_path):
    foreign = _rewrite(
        package, tmp_path / "foreign.zip", change_rdf=lambda r: _foreign(r, "pytorch_state_dict")
    )
    clear_model_cache()
    with pytest.raises(ModelError, match="trust the package"):
        load_model(str(foreign))
    loaded = load_model(str(foreign), trust_package=True)
    image = load_sample("nuclei")[:160, :160]
    result = segment_semantic(image, loaded).instances
    reference = segment_semantic(image, "nuclei-unet").instances
    assert abs(len(result) - len(reference)) <= 2 and len(result) > 5


def test_foreign_torchscript_runs_without_code(package, tmp_path):
    foreign = _rewrite(
        package, tmp_path / "script.zip", change_rdf=lambda r: _foreign(r, "torchscript")
    )
    loaded = load_model(str(foreign))
    assert loaded.info.class_names == ["background", "nucleus", "boundary"]
    result = segment_semantic(load_sample("nuclei")[:160, :160], loaded).instances
    assert len(result) > 5


def test_widget_opens_packages_and_asks_before_running_their_code(
    make_napari_viewer, package, tmp_path
):
    from napari_instseg._widgets.packages import open_package
    from napari_instseg._widgets.segment import (
        InstanceSegmentationWidget,
        SemanticSegmentationWidget,
    )

    viewer = make_napari_viewer()
    viewer.add_image(load_sample("nuclei")[:128, :128], name="nuclei")
    widget = SemanticSegmentationWidget(viewer)
    assert open_package(widget, package) == str(package.resolve())
    _, labels, _ = widget.run(blocking=True)
    assert labels.data.max() > 3
    foreign = _rewrite(
        package, tmp_path / "code.zip", change_rdf=lambda r: _foreign(r, "pytorch_state_dict")
    )
    asked = []
    assert open_package(widget, foreign, confirm=lambda *a: asked.append(a) or False) is None
    assert asked and "not trusted" in widget.status.value
    assert open_package(widget, foreign, confirm=lambda *a: True) is not None
    other = InstanceSegmentationWidget(viewer)
    assert open_package(other, package) is None and "other widget" in other.status.value

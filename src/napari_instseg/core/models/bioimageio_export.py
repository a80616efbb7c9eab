"""Export a U-Net as a bioimage.io model package (spec 0.5, ``bioimageio.spec``).

The package holds the weights twice, as the spec's two PyTorch formats: a
state dict with the architecture's source (``unet_architecture.py``: our
``models/unet.py`` plus a wrapper that returns class probabilities) and
TorchScript. Inputs are ``(batch, channel, y, x)`` raw intensities with the
model's percentile normalisation as ``scale_range``; the output is the class
probabilities (softmax) per pixel. A test image from the nuclei sample with
its expected output, a cover, the model card and the citations travel with it.
``config.napari_instseg`` keeps our metadata, so that importing our own
package restores the model exactly (``core.models.bioimageio_import``).

Mask R-CNN models are refused: see ``MASK_RCNN_REASON``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..types import ModelError
from .architectures import INSTANCE
from .loading import load_model

# why a Mask R-CNN is not exported (the CLI and docs say this)
MASK_RCNN_REASON = (
    "a Mask R-CNN's output is a set of instances (boxes, scores, classes and 28x28 "
    "masks in box coordinates) that code outside the network pastes into a label "
    "image; spec 0.5 can declare such data-dependent outputs, but its post-processing "
    "steps (binarize, scale, clip, ...) cannot paste masks into boxes, so deepImageJ, "
    "QuPath, ilastik or bioimageio.core would get raw head outputs, not labels"
)
WRAPPER_SOURCE = '''

class ClassProbabilities(nn.Module):
    """The U-Net with a softmax: per-pixel class probabilities (bioimage.io export)."""

    def __init__(self, **config):
        super().__init__()
        self.unet = build_unet(**config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.unet(x), dim=1)
'''
CITATIONS = [
    (
        "Caicedo et al., Nucleus segmentation across imaging experiments: the 2018 "
        "Data Science Bowl, Nature Methods 16 (2019)",
        "10.1038/s41592-019-0612-7",
    ),
    (
        "Ljosa, Sokolnicki, Carpenter, Annotated high-throughput microscopy image sets "
        "for validation (BBBC), Nature Methods 9 (2012)",
        "10.1038/nmeth.2083",
    ),
]


class Wrapper(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x):
        return torch.softmax(self.unet(x), dim=1)


def export_bioimageio(model, output: str | Path, test_image: np.ndarray | None = None) -> Path:
    """Write ``model`` (a name, checkpoint or loaded U-Net) as a bioimage.io
    package at ``output`` (a ``.zip``); returns the path."""
    from bioimageio.spec import save_bioimageio_package

    loaded = load_model(model, "cpu")
    if loaded.info.task == INSTANCE:
        raise ModelError(
            f"{loaded.name} is a Mask R-CNN; it cannot be exported: {MASK_RCNN_REASON}"
        )
    if loaded.info.architecture != "unet":
        raise ModelError(f"only U-Nets can be exported, not {loaded.info.architecture}")
    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        module = Wrapper(loaded.module).eval()
        files = _write_files(folder, loaded, module, test_image)
        descr = _description(loaded, files)
        save_bioimageio_package(descr, output_path=output)
    return output


def _write_files(folder: Path, loaded, module, test_image) -> dict:
    from . import unet

    source = Path(unet.__file__).read_text()
    (folder / "unet_architecture.py").write_text(source + WRAPPER_SOURCE)
    torch.save(module.state_dict(), folder / "weights.pt")
    image = _test_image() if test_image is None else test_image
    x = _as_input(image, loaded.info.in_channels)
    normalised = _scale_range(x, loaded.info.normalization)
    with torch.no_grad():
        y = module(torch.from_numpy(normalised)).numpy()
        traced = torch.jit.trace(module, torch.from_numpy(normalised))
    traced.save(str(folder / "weights_torchscript.pt"))
    np.save(folder / "test_input.npy", x)
    np.save(folder / "test_output.npy", y.astype(np.float32))
    _cover(folder / "cover.png", x, y)
    (folder / "README.md").write_text(_model_card(loaded))
    return {name: folder / name for name in (
        "unet_architecture.py", "weights.pt", "weights_torchscript.pt", "test_input.npy",
        "test_output.npy", "cover.png", "README.md",
    )}  # fmt: skip


def _test_image() -> np.ndarray:
    """A 256 px corner of the nuclei sample (package data; val split, CC0)."""
    from importlib import resources

    import tifffile

    return tifffile.imread(resources.files("napari_instseg") / "samples" / "nuclei.tif")[:256, :256]


def _as_input(image: np.ndarray, in_channels: int) -> np.ndarray:
    """(1, C, Y, X) float32 raw intensities, gray repeated into every channel."""
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], in_channels, axis=-1)
    return np.ascontiguousarray(image[..., :in_channels].transpose(2, 0, 1)[None])


def _scale_range(x: np.ndarray, normalization: dict, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io's scale_range over (y, x) per sample and channel."""
    low = np.percentile(x, normalization.get("low", 1.0), axis=(2, 3), keepdims=True)
    high = np.percentile(x, normalization.get("high", 99.8), axis=(2, 3), keepdims=True)
    return ((x - low) / (high - low + eps)).astype(np.float32)


def _cover(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """The test image beside its nucleus probability."""
    from skimage.io import imsave

    gray = x[0].mean(0)
    gray = (gray - gray.min()) / max(np.ptp(gray), 1e-6)
    nucleus = y[0, 1]
    both = np.concatenate([gray, np.ones((gray.shape[0], 8)), nucleus], axis=1)
    imsave(path, (both * 255).astype(np.uint8), check_contrast=False)


def _model_card(loaded) -> str:
    info = loaded.info
    training = info.training or {}
    lines = [
        f"# {info.name}",
        "",
        info.description or "A U-Net for per-pixel classes.",
        "",
        f"Classes: {', '.join(info.class_names)}. Input: {info.in_channels} channels "
        "(a gray image goes into every channel); intensities are scaled between their "
        f"{info.normalization.get('low', 1.0)}th and {info.normalization.get('high', 99.8)}th "
        "percentiles. Output: per-pixel class probabilities.",
        "",
        "Instances: napari-instseg seeds each nucleus where the nucleus probability is high "
        "and grows it through the nucleus and boundary classes "
        f"(post-processing settings: `{json.dumps(info.postprocess)}`).",
        "",
        f"Training data: {training.get('data', 'see napari-instseg docs/models.md')}.",
        "Made with napari-instseg (`napari-instseg export-bioimageio`); its docs/models.md "
        "is the full model card (data, split, recipe, accuracy per image kind).",
        "",
        "# Validation",
        "",
        f"On the DSB2018 validation split: {json.dumps(training.get('validation', {}))}. "
        "docs/models.md and docs/benchmarks.md of napari-instseg give the frozen test "
        "split's figures per image kind.",
    ]
    return "\n".join(lines) + "\n"


def _description(loaded, files: dict):
    from bioimageio.spec.model import v0_5 as spec

    info = loaded.info
    channels = [f"channel{i}" for i in range(info.in_channels)]
    size = spec.ParameterizedSize(min=64, step=16)
    input_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in channels]),
        spec.SpaceInputAxis(id=spec.AxisId("y"), size=size),
        spec.SpaceInputAxis(id=spec.AxisId("x"), size=size),
    ]
    scale = spec.ScaleRangeDescr(
        kwargs=spec.ScaleRangeKwargs(
            axes=[spec.AxisId("y"), spec.AxisId("x")],
            min_percentile=float(info.normalization.get("low", 1.0)),
            max_percentile=float(info.normalization.get("high", 99.8)),
        )
    )
    inputs = spec.InputTensorDescr(
        id=spec.TensorId("raw"),
        description="raw intensities, (batch, channel, y, x)",
        axes=input_axes,
        test_tensor=spec.FileDescr(source=files["test_input.npy"]),
        preprocessing=[scale],
    )
    output_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in info.class_names]),
        spec.SpaceOutputAxis(
            id=spec.AxisId("y"),
            size=spec.SizeReference(tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId("y")),
        ),
        spec.SpaceOutputAxis(
            id=spec.AxisId("x"),
            size=spec.SizeReference(tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId("x")),
        ),
    ]
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"),
        description="per-pixel class probabilities (softmax over channels)",
        axes=output_axes,
        test_tensor=spec.FileDescr(source=files["test_output.npy"]),
    )
    torch_version = spec.Version(torch.__version__.split("+")[0])
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=files["weights.pt"],
            architecture=spec.ArchitectureFromFileDescr(
                source=files["unet_architecture.py"],
                callable=spec.Identifier("ClassProbabilities"),
                kwargs=dict(info.config),
            ),
            pytorch_version=torch_version,
        ),
        torchscript=spec.TorchscriptWeightsDescr(
            source=files["weights_torchscript.pt"],
            pytorch_version=torch_version,
            parent="pytorch_state_dict",
        ),
    )
    return spec.ModelDescr(
        name=info.name.replace("-", " ").title().replace(" ", "") or "NucleiUNet",
        description=info.description or "U-Net for nuclei",
        authors=[spec.Author(name="napari-instseg developers")],
        cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in CITATIONS],
        license=spec.LicenseId("BSD-3-Clause"),
        documentation=spec.FileDescr(source=files["README.md"]),
        covers=[spec.FileDescr(source=files["cover.png"])],
        tags=["nuclei", "segmentation", "unet", "fluorescence", "napari-instseg", "2d"],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        config={"napari_instseg": info.to_metadata()},
    )

"""bioimage.io model packages (a ``.zip`` or a folder with ``rdf.yaml``)
wherever a model name goes.

- **Ours** (``config.napari_instseg`` present, as ``bioimageio_export``
  writes): the U-Net is rebuilt by our own code from the state dict, loaded
  with ``torch.load(weights_only=True)``, so it gives the same labels as the
  model it came from. No code from the package runs.
- **Others'**: a semantic model through ``bioimageio.core``: TorchScript
  weights (no Python runs), or a PyTorch state dict whose architecture source
  the package ships, which runs only when the user trusts the package
  (``trust_package``; CLI ``--trust-package``; the widget asks). Its output
  channels are the classes (one channel: foreground probability); its
  ``scale_range`` percentiles become our normalisation.

Every package is checked first: a zip whose member paths escape the package
folder (zip-slip), or links, is refused before anything reads it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath

import torch

from ..types import ModelError

_TRUSTED: set[str] = set()  # resolved paths the user trusts to run their code


def is_package(source) -> bool:
    path = Path(source)
    if path.suffix.lower() == ".zip":
        return True
    return path.is_dir() and any((path / n).exists() for n in ("rdf.yaml", "bioimageio.yaml"))


def trust_package(source) -> None:
    """Allow the architecture code shipped in this package to run."""
    _TRUSTED.add(str(Path(source).resolve()))


def check_archive(source) -> None:
    """Refuse a zip with members outside its folder or that are links."""
    path = Path(source)
    if path.is_dir():
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                name = PurePosixPath(member.filename.replace("\\", "/"))
                if name.is_absolute() or ".." in name.parts or ":" in member.filename:
                    raise ModelError(
                        f"{path.name}: refused: the archive path {member.filename!r} "
                        "escapes the package folder"
                    )
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ModelError(f"{path.name}: refused: {member.filename!r} is a link")
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelError(f"{path.name}: not a readable bioimage.io package ({err})") from None


def describe(source):
    """The package's bioimage.io model description, checked."""
    try:
        from bioimageio.spec import load_description
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise ModelError(
            "bioimage.io packages need the bioimageio extra: "
            "pip install 'napari-instseg[bioimageio]'"
        ) from None
    check_archive(source)
    descr = load_description(source, perform_io_checks=False)
    if not isinstance(descr, v0_5.ModelDescr):
        summary = getattr(descr, "validation_summary", None)
        detail = summary.format() if summary is not None else type(descr).__name__
        first = next((line for line in str(detail).splitlines() if line.strip()), detail)
        raise ModelError(f"{Path(source).name}: not a bioimage.io model (spec 0.5): {first}")
    return descr


def read_member(source, relative) -> bytes:
    path = Path(source)
    name = str(relative)
    if path.is_dir():
        target = (path / name).resolve()
        if path.resolve() not in target.parents:
            raise ModelError(f"{path.name}: refused: {name!r} lies outside the package")
        return target.read_bytes()
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def ours(descr) -> dict | None:
    """Our metadata, when the package was exported by napari-instseg."""
    extra = getattr(descr.config, "model_extra", None) or {}
    metadata = extra.get("napari_instseg")
    return metadata if isinstance(metadata, dict) and "architecture" in metadata else None


def state_and_metadata(source, descr=None) -> tuple[dict, dict]:
    """(state dict, metadata) of one of our own packages, without unpickling
    (``descr``: its description when the caller has read it already)."""
    descr = describe(source) if descr is None else descr
    metadata = ours(descr)
    if metadata is None or descr.weights.pytorch_state_dict is None:
        raise ModelError(f"{Path(source).name}: not a napari-instseg package")
    state = _load_state(read_member(source, descr.weights.pytorch_state_dict.source), source)
    prefix = "unet."  # the export's wrapper adds a softmax around our module
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}, metadata


def _load_state(data: bytes, source) -> dict:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with objects beyond tensors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"{Path(source).name}: refused: its weights are not a plain state dict ({first[:120]})"
        ) from None


def load_foreign(source, descr, target: torch.device):
    """Someone else's package as a semantic LoadedModel."""
    from .loaded import LoadedModel

    weights = descr.weights
    if weights.torchscript is not None:
        data = read_member(source, weights.torchscript.source)
        module = torch.jit.load(io.BytesIO(data), map_location=target)
    elif weights.pytorch_state_dict is not None:
        if str(Path(source).resolve()) not in _TRUSTED:
            raise ModelError(
                f"{Path(source).name} ships Python code for its architecture, which runs only "
                "if you trust the package (API: trust_package(path); CLI: --trust-package)"
            )
        module = _trusted_module(source, descr, target)
    else:
        raise ModelError(f"{Path(source).name}: no PyTorch or TorchScript weights")
    module.eval()
    info = _foreign_info(descr)
    return LoadedModel(module, info, target, tile_predictor=_probabilities)


def _trusted_module(source, descr, target):
    import tempfile

    from bioimageio.core.backends.pytorch_backend import load_torch_model
    from bioimageio.spec import load_description

    with tempfile.TemporaryDirectory() as folder:
        if not Path(source).is_dir():
            check_archive(source)
            with zipfile.ZipFile(source) as archive:
                archive.extractall(folder)  # members checked above
            source = folder
        local = load_description(source, perform_io_checks=False)
        return load_torch_model(local.weights.pytorch_state_dict, devices=[target])


def _foreign_info(descr):
    from .info import ModelInfo

    tensor_in, tensor_out = descr.inputs[0], descr.outputs[0]
    axes_in = [str(a.id) for a in tensor_in.axes]
    if axes_in not in (["batch", "channel", "y", "x"], ["batch", "y", "x"]):
        raise ModelError(f"{descr.name}: inputs with axes {axes_in} are not supported (b, c, y, x)")
    channel = next((a for a in tensor_in.axes if str(a.id) == "channel"), None)
    in_channels = len(channel.channel_names) if channel is not None else 1
    low, high = 0.0, 100.0
    for step in tensor_in.preprocessing:
        if step.id == "scale_range":
            low, high = step.kwargs.min_percentile, step.kwargs.max_percentile
    out_channel = next((a for a in tensor_out.axes if str(a.id) == "channel"), None)
    names = [str(n) for n in out_channel.channel_names] if out_channel is not None else []
    classes = names if len(names) >= 2 else ["background", names[0] if names else "foreground"]
    return ModelInfo(
        name=str(descr.name),
        architecture="unet",
        config={},
        class_names=classes,
        in_channels=in_channels,
        normalization={"low": float(low), "high": float(high)},
        tile_size=512,
        description=str(descr.description),
        postprocess={"instance_class": classes[1]},
    )


def _probabilities(module, batch: torch.Tensor) -> torch.Tensor:
    """Class probabilities from a foreign model's output (probabilities, logits
    or one foreground channel)."""
    with torch.inference_mode():
        out = module(batch.contiguous()).float()
    if out.shape[1] == 1:
        p = out if (out.min() >= 0 and out.max() <= 1) else torch.sigmoid(out)
        return torch.cat([1 - p, p], dim=1)
    sums = out.sum(1)
    if out.min() >= 0 and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        return out
    return torch.softmax(out, dim=1)

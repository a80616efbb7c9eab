"""The one registry of models that widgets, CLI and API share.

A model is described by a ``ModelInfo`` (architecture, builder config,
classes, channels, normalisation, tile size); a name maps to an info plus a
way to get weights. ``load_model`` accepts a registered name, a path to a
checkpoint, or an already loaded model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..types import ModelError
from . import checkpoint

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported by the functions that need it (1-2 s): the widgets list
# models and read their stored settings when they open, without it.

SEMANTIC, INSTANCE = "semantic", "instance"


@dataclass
class ModelInfo:
    """What the engine needs to know to run a model, stored in its checkpoint."""

    name: str
    architecture: str  # "unet" or "maskrcnn"
    config: dict  # keyword arguments of the builder
    class_names: list[str]  # index 0 is background
    in_channels: int = 3
    normalization: dict = field(default_factory=lambda: {"low": 1.0, "high": 99.8})
    tile_size: int = 512
    description: str = ""
    postprocess: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return SEMANTIC if self.architecture == "unet" else INSTANCE

    def to_metadata(self) -> dict:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: dict) -> ModelInfo:
        known = {f for f in cls.__dataclass_fields__}
        missing = {"name", "architecture", "config", "class_names"} - metadata.keys()
        if missing:
            raise ModelError(f"checkpoint metadata lacks {', '.join(sorted(missing))}")
        if metadata["architecture"] not in BUILDERS:
            raise ModelError(f"unknown architecture {metadata['architecture']!r} in checkpoint")
        return cls(**{k: v for k, v in metadata.items() if k in known})


def _build_unet(config: dict) -> nn.Module:
    from .unet import build_unet

    return build_unet(**config)


def _build_maskrcnn(config: dict) -> nn.Module:
    from .maskrcnn import build_maskrcnn

    return build_maskrcnn(**config)


BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "unet": _build_unet,
    "maskrcnn": _build_maskrcnn,
}


def build_model(info: ModelInfo) -> nn.Module:
    """A randomly initialised model of the architecture and config in ``info``."""
    try:
        return BUILDERS[info.architecture](dict(info.config))
    except TypeError as err:
        raise ModelError(f"model config does not fit {info.architecture}: {err}") from None


@dataclass
class LoadedModel:
    """A model on a device, ready for the engine; pass it as ``model=`` to
    avoid reloading weights on every call."""

    module: nn.Module
    info: ModelInfo
    device: torch.device
    # A faster copy for prediction (e.g. BatchNorm folded into convolutions),
    # made by load_model; models being trained leave it None.
    inference_module: nn.Module | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def predictor(self) -> nn.Module:
        """The module the prediction engine runs."""
        return self.inference_module if self.inference_module is not None else self.module


@dataclass
class RegisteredModel:
    """A registry entry: a one-line description and how to get the weights."""

    name: str
    description: str
    weights: Callable[[], tuple[dict, dict]]  # -> (state_dict, metadata)
    available: Callable[[], bool]
    architecture: str | None = None  # "unet" / "maskrcnn", when known without loading
    metadata: Callable[[], dict] | None = None  # read without loading the weights

    @property
    def task(self) -> str | None:
        if self.architecture is None:
            return None
        return SEMANTIC if self.architecture == "unet" else INSTANCE


_REGISTRY: dict[str, RegisteredModel] = {}
_LISTENERS: list = []  # weak references to callables told about new models


def register_model(entry: RegisteredModel) -> None:
    _REGISTRY[entry.name] = entry
    for ref in list(_LISTENERS):
        callback = ref()
        if callback is None:
            _LISTENERS.remove(ref)
            continue
        try:
            callback()
        except RuntimeError:  # e.g. a closed widget's Qt object
            _LISTENERS.remove(ref)


def on_registry_change(callback) -> None:
    """Call ``callback()`` whenever a model is registered (weakly held, so a
    closed widget is not kept alive)."""
    import weakref

    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else weakref.ref(callback)
    _LISTENERS.append(ref)


def register_checkpoint(path: str | os.PathLike, name: str | None = None) -> str:
    """Register a checkpoint file under ``name`` (default: its metadata name)."""
    path = Path(path)
    metadata = checkpoint.read_metadata(path)
    name = name or metadata.get("name") or path.stem
    register_model(
        RegisteredModel(
            name=name,
            description=metadata.get("description") or f"checkpoint {path}",
            weights=lambda: checkpoint.load_checkpoint(path),
            available=path.exists,
            architecture=metadata.get("architecture"),
            metadata=lambda: checkpoint.read_metadata(path),
        )
    )
    return name


def stored_postprocess(name: str) -> dict:
    """The post-processing settings stored with a registered model (e.g. its
    tuned ``score_threshold``), read without loading weights; {} if unknown."""
    entry = _REGISTRY.get(name)
    if entry is None or entry.metadata is None or not entry.available():
        return {}
    try:
        return dict(entry.metadata().get("postprocess") or {})
    except (OSError, ValueError, ModelError):
        return {}


def user_config_dir() -> Path:
    """Where the plugin keeps user settings (``NAPARI_INSTSEG_CONFIG_DIR`` overrides)."""
    override = os.environ.get("NAPARI_INSTSEG_CONFIG_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "napari-instseg"


def _remembered_file() -> Path:
    return user_config_dir() / "checkpoints.json"


def remembered_checkpoints() -> list[str]:
    """Checkpoint paths the user loaded before (missing files are skipped)."""
    try:
        paths = json.loads(_remembered_file().read_text())
    except (OSError, ValueError):
        return []
    return [p for p in paths if isinstance(p, str) and Path(p).exists()]


def remember_checkpoint(path: str | os.PathLike) -> str:
    """Register a checkpoint and remember it for later sessions; returns its name."""
    path = Path(path).resolve()
    name = register_checkpoint(path)
    paths = [p for p in remembered_checkpoints() if Path(p) != path] + [str(path)]
    try:
        _remembered_file().parent.mkdir(parents=True, exist_ok=True)
        _remembered_file().write_text(json.dumps(paths[-20:], indent=1))
    except OSError:
        pass  # remembering is a convenience; the model is registered anyway
    return name


def register_remembered_checkpoints() -> None:
    for path in remembered_checkpoints():
        try:
            register_checkpoint(path)
        except ModelError:
            continue


def list_models() -> dict[str, str]:
    """Registered model names with a one-line description each."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def models_for_task(task: str) -> list[tuple[str, bool]]:
    """(name, weights available) of the registered models for ``task``
    ("semantic" or "instance"), available ones first."""
    entries = [(n, e.available()) for n, e in _REGISTRY.items() if e.task in (task, None)]
    return sorted(entries, key=lambda entry: not entry[1])


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("CUDA was requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelError("MPS was requested but is not available; use 'cpu' or 'auto'")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ModelError(f"unknown device {device!r} (use auto, cpu, cuda or mps)")
    return torch.device(device)


def available_devices() -> list[str]:
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def load_model(model, device: str | torch.device = "auto") -> LoadedModel:
    """A ``LoadedModel`` from a registered name, a checkpoint path or a LoadedModel."""
    target = resolve_device(device)
    if isinstance(model, LoadedModel):
        if model.device != target and device != "auto":
            model.module.to(target)
            if model.inference_module is not None:
                model.inference_module.to(target)
            model.device = target
        return model
    if isinstance(model, (str, os.PathLike)) and str(model) in _REGISTRY:
        state, metadata = _REGISTRY[str(model)].weights()
    elif isinstance(model, (str, os.PathLike)) and (
        Path(model).suffix or os.sep in str(model) or Path(model).exists()
    ):
        state, metadata = checkpoint.load_checkpoint(model)
    else:
        known = ", ".join(_REGISTRY) or "none"
        raise ModelError(f"unknown model {model!r}; known models: {known}")
    info = ModelInfo.from_metadata(metadata)
    module = build_model(info)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ModelError(
            f"weights do not fit the {info.architecture} described in the metadata: {detail}"
        ) from None
    module.eval().to(target)
    inference = None
    if info.architecture == "unet":
        from .unet import fuse_batchnorm

        inference = fuse_batchnorm(module).to(target)
    return LoadedModel(module, info, target, inference)


# --- the bundled and torchvision models -------------------------------------------------

_BUNDLED = {
    "nuclei-unet": "U-Net (background/nucleus/boundary) for nuclei in fluorescence and H&E; "
    "bundled weights trained on DSB2018",
    "nuclei-maskrcnn": "Mask R-CNN (ResNet-18-FPN) for nuclei in fluorescence and H&E; "
    "bundled weights trained on DSB2018",
}


def bundled_weights_path(name: str) -> Path:
    return Path(str(resources.files("napari_instseg") / "weights" / f"{name}.safetensors"))


def _bundled_loader(name: str) -> Callable[[], tuple[dict, dict]]:
    def load() -> tuple[dict, dict]:
        path = bundled_weights_path(name)
        if not path.exists():
            raise ModelError(
                f"the bundled weights of {name!r} are missing from this installation "
                f"(expected {path}); reinstall napari-instseg or pass a checkpoint path"
            )
        return checkpoint.load_checkpoint(path)

    return load


for _name, _description in _BUNDLED.items():
    register_model(
        RegisteredModel(
            _name,
            _description,
            _bundled_loader(_name),
            lambda n=_name: bundled_weights_path(n).exists(),
            _name.rsplit("-", 1)[1],
            lambda n=_name: checkpoint.read_metadata(bundled_weights_path(n)),
        )
    )


def _coco_weights() -> tuple[dict, dict]:
    from .coco import coco_maskrcnn_weights

    return coco_maskrcnn_weights()


def _coco_available() -> bool:
    from .coco import coco_weights_file

    return coco_weights_file().exists()


register_model(
    RegisteredModel(
        "coco-maskrcnn",
        "torchvision's COCO-pretrained Mask R-CNN (ResNet-50-FPN, 91 everyday classes); "
        "weights downloaded by torchvision on first use",
        _coco_weights,
        _coco_available,
        "maskrcnn",
    )
)

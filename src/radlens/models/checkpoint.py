"""The radlens checkpoint convention: a folder with ``config.json`` and ``model.safetensors``.

``config.json`` holds ``model_type`` (the registry name), the model's config fields, the radlens version
that wrote it and an optional ``extra`` mapping (training step, metrics, ...). ``model.safetensors``
holds the weights; tensors shared between parameters (tied embeddings) are stored once and their other
names recorded in the safetensors metadata. Pickle is never used, so loading a checkpoint cannot run code.

Models take part by being registered::

    @register_model("dual_encoder")
    class DualEncoder(nn.Module):
        config_class = DualEncoderConfig
        def __init__(self, config: DualEncoderConfig, load_pretrained: bool = True): ...

``load_checkpoint`` builds the model from its config with ``load_pretrained=False`` (the checkpoint
holds every weight, so published weights need not be read) and loads the tensors.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import radlens
from radlens.core import Config, InputError, atomic_directory, atomic_write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_RESERVED = ("model_type", "radlens_version", "extra")
# Modules whose import registers radlens's own model types (imported on first lookup).
_BUILTIN_MODULES = ("radlens.models.dual_encoder", "radlens.models.fusion", "radlens.models.vgg")


class _Registrable(Protocol):
    config_class: type[Config]


M = TypeVar("M", bound=nn.Module)
_REGISTRY: dict[str, type[nn.Module]] = {}


def register_model(model_type: str) -> Callable[[type[M]], type[M]]:
    """Class decorator: make ``load_checkpoint`` able to build this model type from its config.

    The class needs a ``config_class`` attribute (a :class:`~radlens.core.Config` subclass), a
    ``config`` attribute on instances, and ``__init__(config, load_pretrained=True)``.
    """

    def decorator(cls: type[M]) -> type[M]:
        if not isinstance(getattr(cls, "config_class", None), type):
            raise TypeError(f"{cls.__name__} needs a config_class attribute to be registered")
        known = _REGISTRY.get(model_type)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"model type {model_type!r} is already registered by {known.__name__}")
        _REGISTRY[model_type] = cls
        cls.model_type = model_type  # type: ignore[attr-defined]
        return cls

    return decorator


def registered_model_types() -> list[str]:
    """Every model type ``load_checkpoint`` can build."""
    _import_builtin_models()
    return sorted(_REGISTRY)


def _import_builtin_models() -> None:
    for name in _BUILTIN_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def _model_class(model_type: str, folder: Path) -> type[nn.Module]:
    if model_type not in _REGISTRY:
        _import_builtin_models()
    if model_type not in _REGISTRY:
        raise InputError(
            f"checkpoint {folder} has unknown model type {model_type!r}",
            f"radlens knows {', '.join(sorted(_REGISTRY))}",
        )
    return _REGISTRY[model_type]


def _model_type_of(model: nn.Module) -> str:
    model_type = getattr(type(model), "model_type", None)
    if model_type is None or _REGISTRY.get(model_type) is not type(model):
        raise TypeError(f"{type(model).__name__} is not a registered radlens model")
    config = getattr(model, "config", None)
    if not isinstance(config, Config):
        raise TypeError(f"{type(model).__name__}.config must be a radlens Config")
    return str(model_type)


# --- tensors ----------------------------------------------------------------------------------------------


def _storage_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (
        tensor.device,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tensor.shape,
        tensor.stride(),
    )


def _split_tied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop later names of tensors that share memory; map each dropped name to the kept one.

    ``save_file`` refuses shared tensors; tied weights (e.g. an MLM decoder tied to the word embeddings)
    are rebuilt by the model's constructor, so storing them once loses nothing.
    """
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in state.items():  # module order: the owner of a tied weight comes first
        key = _storage_key(tensor)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensor = tensor.detach().to("cpu")
            # A view into a larger storage (a slice of another weight) must be copied out: safetensors
            # refuses tensors whose memory overlaps.
            if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
                tensor = tensor.clone()
            kept[name] = tensor.contiguous()
    return kept, aliases


#: Config fields older radlens versions did not write, with the value their absence means: the behaviour
#: those versions had. ``image_normalization`` (radlens 0.2): radlens 0.1 normalised the
#: ImageNet-initialised EfficientNet-Lite0's input with ImageNet mean/std.
LEGACY_VALUES: dict[str, Any] = {"image_normalization": "imagenet"}


def _config_sections(values: dict[str, Any]) -> list[dict[str, Any]]:
    """A dumped config and the dual-encoder config nested in it (a fusion model's ``aligner``)."""
    aligner = values.get("aligner")
    return [values, aligner] if isinstance(aligner, dict) else [values]


def _canonical_config(model_type: str, config: Config) -> str:
    values = config.model_dump(mode="json")
    # A field at its legacy value is left out, so a checkpoint written before the field existed keeps
    # its fingerprint, and the indexes built with it still open.
    for section in _config_sections(values):
        for name, legacy in LEGACY_VALUES.items():
            if name in section and section[name] == legacy:
                del section[name]
    return json.dumps({"model_type": model_type, **values}, sort_keys=True)


def _fingerprint(config_json: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(config_json.encode("utf-8"))
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# --- public API -------------------------------------------------------------------------------------------


@dataclass
class CheckpointInfo:
    """What ``config.json`` of a checkpoint says, without loading weights."""

    folder: Path
    model_type: str
    config: dict[str, Any]
    radlens_version: str
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    model: nn.Module,
    folder: str | os.PathLike[str],
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` to ``folder`` as ``config.json`` + ``model.safetensors``, atomically.

    The folder is built under a temporary name and renamed when complete, so an interrupted save
    leaves the previous checkpoint (or nothing). ``extra`` must be JSON-serialisable. An existing
    non-empty ``folder`` is replaced only with ``overwrite``.
    """
    model_type = _model_type_of(model)
    config = cast(Config, model.config)
    tensors, aliases = _split_tied(model.state_dict())
    document = {
        "model_type": model_type,
        "radlens_version": radlens.__version__,
        **config.model_dump(mode="json"),
        "extra": extra or {},
    }
    clash = [name for name in _RESERVED if name in type(config).model_fields]
    if clash:
        raise TypeError(f"{type(config).__name__} uses reserved checkpoint keys {clash}")
    try:
        text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    except TypeError as exc:
        raise InputError(f"checkpoint extra data is not JSON-serialisable ({exc})") from exc
    metadata = {"format": "pt", "model_type": model_type, "tied": json.dumps(aliases, sort_keys=True)}
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        atomic_write_text(tmp / CONFIG_NAME, text)
    return Path(folder)


def read_checkpoint_info(folder: str | os.PathLike[str]) -> CheckpointInfo:
    """Read and check ``config.json`` of a checkpoint folder (clear InputErrors for anything wrong)."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"checkpoint folder {path} not found", "pass a folder written by radlens")
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (path / name).is_file()]
    if missing:
        raise InputError(
            f"checkpoint folder {path} lacks {' and '.join(missing)}",
            "pass a complete checkpoint folder written by radlens",
        )
    try:
        document = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path / CONFIG_NAME} is not valid JSON", "the checkpoint is damaged") from exc
    if not isinstance(document, dict) or not isinstance(document.get("model_type"), str):
        raise InputError(f"{path / CONFIG_NAME} has no model_type", "pass a folder written by radlens")
    extra = document.pop("extra", {})
    return CheckpointInfo(
        folder=path,
        model_type=document.pop("model_type"),
        radlens_version=str(document.pop("radlens_version", "unknown")),
        config=document,
        extra=extra if isinstance(extra, dict) else {},
    )


def upgrade_legacy_config(config_class: type[Config], document: dict[str, Any]) -> dict[str, Any]:
    """Fill the :data:`LEGACY_VALUES` fields an older radlens did not write, so its checkpoints keep
    computing exactly what they were trained to (a fusion model's ``aligner`` too)."""
    upgraded = dict(document)
    if isinstance(upgraded.get("aligner"), dict):
        upgraded["aligner"] = dict(upgraded["aligner"])  # filled below: never the caller's dict
    for section in _config_sections(upgraded):
        for name, legacy in LEGACY_VALUES.items():
            # an aligner is a dual-encoder config, which has every such field
            if section is not upgraded or name in config_class.model_fields:
                section.setdefault(name, legacy)
    return upgraded


def _load_config(info: CheckpointInfo, cls: type[nn.Module]) -> Config:
    config_class = cast(_Registrable, cls).config_class
    try:
        return config_class.model_validate(upgrade_legacy_config(config_class, info.config))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise InputError(
            f"checkpoint {info.folder} has an invalid {info.model_type} config: {where}: {first['msg']}",
            f"it was written by radlens {info.radlens_version}; use a matching version",
        ) from exc


def _read_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    weights = folder / WEIGHTS_NAME
    try:
        tensors = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise InputError(
            f"{weights} is not a readable safetensors file", "the checkpoint is damaged"
        ) from exc
    try:
        aliases = json.loads(metadata.get("tied", "{}"))
    except json.JSONDecodeError:
        aliases = None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise InputError(f"{weights} has damaged tied-weight metadata", "the checkpoint is damaged")
    return tensors, aliases


def _check_shapes(folder: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"lacks weight {missing[0]!r}" if missing else f"has unknown weight {unexpected[0]!r}"
        raise InputError(
            f"checkpoint {folder} does not match its model: it {what}",
            f"{len(missing)} missing, {len(unexpected)} unknown; was it written by another radlens version?",
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise InputError(
                f"checkpoint {folder} does not match its config: weight {name!r} has shape "
                f"{tuple(tensor.shape)} but the model expects {tuple(expected[name].shape)}",
                "the config.json and model.safetensors come from different models",
            )


def load_checkpoint(folder: str | os.PathLike[str], expected_type: str | None = None) -> nn.Module:
    """Build the model saved in ``folder`` and load its weights (in eval mode, on the CPU).

    ``expected_type`` refuses checkpoints of another model type with a clear InputError.
    """
    info = read_checkpoint_info(folder)
    if expected_type is not None and info.model_type != expected_type:
        raise InputError(
            f"checkpoint {info.folder} holds a {info.model_type} model, not a {expected_type}",
            f"pass a {expected_type} checkpoint",
        )
    cls = _model_class(info.model_type, info.folder)
    config = _load_config(info, cls)
    model = cls(config, load_pretrained=False)
    tensors, aliases = _read_tensors(info.folder)
    for alias, source in aliases.items():
        if source in tensors:
            tensors[alias] = tensors[source]
    _check_shapes(info.folder, model, tensors)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def model_fingerprint(model_or_folder: nn.Module | str | os.PathLike[str]) -> str:
    """A SHA-256 of the model type, config and weights (not the radlens version).

    A model and the checkpoint it was saved to have the same fingerprint, so an index built with one
    can refuse queries embedded by another.
    """
    if isinstance(model_or_folder, nn.Module):
        model_type = _model_type_of(model_or_folder)
        tensors, _ = _split_tied(model_or_folder.state_dict())
        return _fingerprint(_canonical_config(model_type, cast(Config, model_or_folder.config)), tensors)
    info = read_checkpoint_info(model_or_folder)
    config = _load_config(info, _model_class(info.model_type, info.folder))
    tensors, _ = _read_tensors(info.folder)
    return _fingerprint(_canonical_config(info.model_type, config), tensors)

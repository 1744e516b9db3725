"""Configs are pydantic models that round-trip through YAML.

Every command builds its config the same way — defaults, then ``--config file.yaml``, then the
command-line options the user actually gave — and writes the resolved config and the versions it ran
with beside its outputs (:func:`write_run_metadata`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from radlens.core.errors import InputError
from radlens.core.io import VERSIONS_FILE, atomic_write_text
from radlens.core.versions import collect_versions

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every radlens config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def to_yaml(self) -> str:
        """This config as YAML text (JSON-compatible values only, so it loads back identically)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Self:
        """Parse YAML text into this config class."""
        data = yaml.safe_load(text)
        if data is None:  # an empty document: no options
            data = {}
        if not isinstance(data, dict):
            raise InputError("config must be a YAML mapping of option names to values")
        return cls.model_validate(data)


def _format_validation_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"invalid {source}: {where}: {first['msg']}"


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in the YAML file ``path``; one-line :class:`InputError` when it is missing, not
    YAML, or not a mapping of option names to values."""
    config_path = Path(path)
    if not config_path.exists():
        raise InputError(f"config file {config_path} not found", "pass the path of a YAML file")
    if not config_path.is_file():
        raise InputError(f"config file {config_path} is not a file", "pass the path of a YAML file")
    try:
        loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(
            f"cannot read config file {config_path} ({exc.strerror or exc.__class__.__name__})"
        ) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {config_path} is not valid YAML ({exc.__class__.__name__})") from exc
    if loaded is None:  # an empty file: no options
        loaded = {}
    if not isinstance(loaded, dict):
        raise InputError(f"config file {config_path} must be a mapping of option names to values")
    return loaded


def load_config(
    cls: type[C], path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> C:
    """Build a ``cls`` config from defaults, an optional YAML file and command-line overrides.

    ``overrides`` holds only the options the user gave (``None`` values are ignored), so a value in
    the YAML file is not silently replaced by a command-line default.
    """
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        source = f"config {path}" if path is not None else "options"
        raise InputError(_format_validation_error(exc, source), "fix the value or see --help") from exc


def write_run_metadata(out_dir: str | os.PathLike[str], config: Config, name: str = "config") -> None:
    """Write ``<name>.yaml`` (the resolved config) and ``versions.json`` into ``out_dir``."""
    folder = Path(out_dir)
    atomic_write_text(folder / f"{name}.yaml", config.to_yaml())
    # The command line is not recorded: it can hold query or report text (patient data).
    atomic_write_text(folder / VERSIONS_FILE, json.dumps(collect_versions(), indent=2) + "\n")

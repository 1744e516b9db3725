from __future__ import annotations

import importlib
import json
import pkgutil
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from radlens.core import Config, InputError, load_config, read_config_file, write_run_metadata


class _Inner(Config):
    rate: float = Field(0.5, ge=0.0, le=1.0)


class _Example(Config):
    size: int = Field(256, ge=64, le=1024)
    name: str = "phantom"
    inner: _Inner = Field(default_factory=_Inner)
    pair: tuple[int, int] = (1, 4)


def test_yaml_round_trip_is_identity() -> None:
    config = _Example(size=512, name="x", inner=_Inner(rate=0.25), pair=(2, 3))
    assert _Example.from_yaml(config.to_yaml()) == config


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("size: 128\nname: fromfile\n")
    config = load_config(_Example, path, {"name": "cli", "size": None})
    assert config.size == 128  # a None override (option not given) keeps the file's value
    assert config.name == "cli"  # a given option wins over the file


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("size: 10\n", "size"),
        ("bogus: 1\n", "bogus"),
        ("- a\n- b\n", "mapping"),
        ("size: [\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_line_input_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_config(_Example, path)
    line = info.value.one_line()
    assert fragment in line
    assert "\n" not in line


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_config(_Example, tmp_path / "absent.yaml")


def test_run_metadata_written_beside_outputs(tmp_path: Path) -> None:
    config = _Example(size=64)
    write_run_metadata(tmp_path, config)
    assert _Example.from_yaml((tmp_path / "config.yaml").read_text()) == config
    versions = json.loads((tmp_path / "versions.json").read_text())
    assert versions["radlens"] and versions["torch"] and versions["numpy"]


@pytest.mark.parametrize("command", [["train", "retrieval"], ["train", "classifier"]])
def test_training_commands_read_config_files_alike(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    code = main([*command, "--data", str(tmp_path), "--config", str(bad), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "must be a mapping of option names to values" in lines[0]


@pytest.mark.parametrize("text", ["[]\n", "0\n", "false\n", "''\n", "just text\n"])
def test_a_document_that_is_not_a_mapping_is_refused_even_when_falsy(tmp_path: Path, text: str) -> None:
    """``[]``, ``0``, ``false`` and ``''`` are not "no options": they were read as an empty config."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match="mapping"):
        load_config(_Example, path)
    with pytest.raises(InputError, match="mapping"):
        _Example.from_yaml(text)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "{}\n"])
def test_an_empty_document_means_defaults(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert read_config_file(path) == {}
    assert load_config(_Example, path) == _Example()
    assert _Example.from_yaml(text) == _Example()


def test_config_path_that_is_a_folder_or_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="is not a file"):
        read_config_file(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text("size: 128\n")

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    # Tests run as root, where permission bits do not stop reads; simulate the OS answer.
    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(InputError, match=r"cannot read config file .*Permission denied"):
        read_config_file(path)


def _all_config_classes() -> list[type[Config]]:
    """Every Config subclass defined in the radlens package (all modules imported first)."""
    import radlens

    for module in pkgutil.walk_packages(radlens.__path__, "radlens."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: set[type[Config]] = set()
    pending = [Config]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            if sub.__module__.startswith("radlens."):
                found.add(sub)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def _required_value(annotation: Any) -> Any:
    """A valid value for a required field of one of the simple types radlens configs use."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)[-1]
    if type(None) in typing.get_args(annotation):
        return None
    return {str: "some/path", bool: True, int: 256}[annotation]


def _instance(cls: type[Config]) -> Config:
    if cls.__name__ == "RetrievalRunConfig":  # needs the chosen model's section, as presets give it
        from radlens.train.presets import preset_values

        return cls.model_validate({"data": "some/path", **preset_values("cpu-demo", "dual")})
    fields = {name: _required_value(f.annotation) for name, f in cls.model_fields.items() if f.is_required()}
    return cls.model_validate(fields)


def test_every_config_class_round_trips_through_yaml(tmp_path: Path) -> None:
    classes = _all_config_classes()
    assert len(classes) >= 20, [cls.__name__ for cls in classes]  # the walk found the package's configs
    for cls in classes:
        config = _instance(cls)
        assert cls.from_yaml(config.to_yaml()) == config, cls.__name__
        write_run_metadata(tmp_path, config, name=cls.__name__)
        assert load_config(cls, tmp_path / f"{cls.__name__}.yaml") == config, cls.__name__
        with pytest.raises(InputError, match="zz_unknown"):  # unknown keys are refused
            load_config(cls, tmp_path / f"{cls.__name__}.yaml", {"zz_unknown": 1})

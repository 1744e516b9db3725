from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field

from radlens.core import Config, InputError, load_config, write_run_metadata


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

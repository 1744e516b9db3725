"""``radlens phantom generate|show``: options, YAML precedence, summaries and one-line errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import yaml
from PIL import Image

from radlens.cli import main

SMALL = ["--studies", "6", "--size", "64", "--workers", "1"]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:")
    return err


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "phantom"
    assert main(["--quiet", "phantom", "generate", "--out", str(out), *SMALL, "--seed", "4"]) == 0
    return out


def test_generate_writes_dataset_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert main(["phantom", "generate", "--out", str(out), *SMALL, "--confounder", "Pneumothorax"]) == 0
    summary = capsys.readouterr().out
    assert "wrote 6 studies" in summary and str(out) in summary and "64 px" in summary
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["studies"] == 6 and config["size"] == 64
    assert config["confounder"]["enabled"] is True and config["confounder"]["finding"] == "Pneumothorax"
    with gzip.open(out / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as handle:
        assert len(handle.read().strip().splitlines()) == 1 + 6


def test_yaml_values_kept_unless_option_given(tmp_path: Path) -> None:
    config_file = tmp_path / "phantom.yaml"
    config_file.write_text("studies: 3\nsize: 64\nseed: 9\nstyle: clinical\nworkers: 1\n")
    out = tmp_path / "ds"
    assert (
        main(["-q", "phantom", "generate", "--out", str(out), "--config", str(config_file), "--seed", "2"])
        == 0
    )
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["studies"], config["size"], config["style"], config["seed"]) == (3, 64, "clinical", 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--studies", "0"], "--studies must be a positive"),
        (["--studies", "-3"], "--studies must be a positive"),
        (["--size", "32"], "--size must be between 64 and 1024"),
        (["--size", "2048"], "--size must be between 64 and 1024"),
        (["--confounder", "Bogus"], "unknown --confounder finding"),
        (["--style", "fancy"], "--style"),
        (["--studies", "many"], "--studies"),
    ],
)
def test_bad_options_exit_2_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    out = tmp_path / "ds"
    assert main(["phantom", "generate", "--out", str(out), "--size", "64", *options]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def test_non_empty_output_needs_overwrite(generated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (generated / "manifest.json").read_bytes()
    assert main(["phantom", "generate", "--out", str(generated), *SMALL]) == 2
    line = _error_line(capsys)
    assert "not empty" in line and "--overwrite" in line
    assert (generated / "manifest.json").read_bytes() == before


def test_unwritable_output_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["phantom", "generate", "--out", str(blocker / "ds"), *SMALL]) == 2
    assert f"output path {blocker} is a file" in _error_line(capsys)  # the parent is a file
    assert main(["phantom", "generate", "--out", str(blocker), *SMALL]) == 2
    assert "is a file" in _error_line(capsys)


def test_bad_yaml_value_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "phantom.yaml"
    config_file.write_text("prevalence: {Pneumothorax: 0.1, Dragons: 0.2}\n")
    assert (
        main(["phantom", "generate", "--out", str(tmp_path / "ds"), *SMALL, "--config", str(config_file)])
        == 2
    )
    assert "Dragons" in _error_line(capsys)
    config_file.write_text("studies: 5\nunknown_option: 1\n")
    assert main(["phantom", "generate", "--out", str(tmp_path / "ds"), "--config", str(config_file)]) == 2
    assert "unknown_option" in _error_line(capsys)


def test_show_writes_grid(generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.png"
    assert main(["phantom", "show", str(generated), "--out", str(grid), "--n", "4"]) == 0
    assert "4 studies" in capsys.readouterr().out
    with Image.open(grid) as picture:
        assert picture.format == "PNG" and picture.width > 64
    assert (tmp_path / "grid_config.yaml").exists() and (tmp_path / "versions.json").exists()


def test_show_errors(generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phantom", "show", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")]) == 2
    _error_line(capsys)
    assert main(["phantom", "show", str(generated), "--out", str(tmp_path / "g.png"), "--n", "0"]) == 2
    assert "--n must be" in _error_line(capsys)
    assert main(["phantom", "show", str(generated), "--out", str(tmp_path / "g.jpg")]) == 2
    assert ".png" in _error_line(capsys)


@pytest.mark.parametrize("command", [["phantom"], ["phantom", "generate"], ["phantom", "show"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Usage" in text and ("--out" in text or "generate" in text)

"""``radlens demo``: a bad --out is a one-line error before any socket, data or model work."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli import main


@pytest.mark.parametrize("serve", ["--no-serve", "--serve"])
@pytest.mark.parametrize("under", [False, True])
def test_out_that_is_or_lies_under_a_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], serve: str, under: bool
) -> None:
    """``demo --out notes.txt`` was an internal error (FileExistsError / NotADirectoryError, exit 1)."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me", encoding="utf-8")
    out = a_file / "demo" if under else a_file
    assert main(["demo", "--out", str(out), serve, "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: output path {a_file} is a file: choose a folder path", err
    assert a_file.read_text(encoding="utf-8") == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]

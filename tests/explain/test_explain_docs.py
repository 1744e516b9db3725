"""The runnable example in docs/explain.md runs and writes the pictures it shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

DOC = Path(__file__).resolve().parents[2] / "docs" / "explain.md"


@pytest.mark.slow
def test_docs_example_runs_and_writes_its_pictures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"## A runnable example.*?```python\n(.*?)```", text, re.S)
    assert match is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(match.group(1), str(DOC), "exec"), {"__name__": "docs_example"})
    pictures = re.findall(r"\(img/(explain_\w+\.png)\)", text)
    assert len(pictures) == 3
    for name in pictures:
        with Image.open(tmp_path / "docs" / "img" / name) as picture:
            assert picture.format == "PNG"
        assert (DOC.parent / "img" / name).is_file()  # the committed copy exists too
    assert "effusion" in (tmp_path / "docs" / "img" / "explain_tokens.html").read_text(encoding="utf-8")

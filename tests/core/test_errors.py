"""Errors print as one line, whatever text they quote."""

from __future__ import annotations

import pytest

from radlens.core import InputError, RadlensError


@pytest.mark.parametrize(
    ("message", "hint", "expected"),
    [
        ("bad value", "fix it", "bad value: fix it"),
        ("file not found.", None, "file not found"),
        # A quoted exception or a file name can hold line breaks; the CLI's one line must not.
        (
            "cannot parse a.yaml (line 1\n  column 2)",
            "fix\r\nit",
            "cannot parse a.yaml (line 1 column 2): fix it",
        ),
        ("first\u2028second\n\n", None, "first second"),
        ("keeps  inner   spacing", None, "keeps  inner   spacing"),
    ],
)
def test_one_line_is_one_line(message: str, hint: str | None, expected: str) -> None:
    for error in (InputError(message, hint), RadlensError(message, hint)):
        assert error.one_line() == expected
        assert str(error) == expected
        assert len(str(error).splitlines()) == 1

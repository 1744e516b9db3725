"""What the commands print about skipped items."""

from __future__ import annotations

import pytest

from radlens.cli._output import SHOWN_PROBLEMS, report_skipped
from radlens.data.schema import Problem


def test_skipped_items_are_counted_and_the_first_few_listed(capsys: pytest.CaptureFixture[str]) -> None:
    problems = [Problem(f"img{n}.jpg", "image file missing") for n in range(SHOWN_PROBLEMS + 2)]
    report_skipped(problems, "some/data")
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0] == f"skipped {SHOWN_PROBLEMS + 2} items while reading some/data:"
    assert lines[1:] == [f"  img{n}.jpg: image file missing" for n in range(SHOWN_PROBLEMS)]


def test_nothing_skipped_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    report_skipped([], "some/data")
    assert capsys.readouterr() == ("", "")

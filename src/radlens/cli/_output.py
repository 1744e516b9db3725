"""Output and option checks shared by the commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from radlens.core import InputError

if TYPE_CHECKING:
    from radlens.data.schema import Problem

#: Skipped items listed on stderr; the rest are counted.
SHOWN_PROBLEMS = 5


def report_skipped(problems: Sequence[Problem], source: object) -> None:
    """Say on stderr how many items reading ``source`` skipped, and list the first few with why.

    Nothing is skipped silently; only paths and reasons are printed, never report text.
    """
    if not problems:
        return
    typer.echo(f"skipped {len(problems)} items while reading {source}:", err=True)
    for problem in problems[:SHOWN_PROBLEMS]:
        typer.echo(f"  {problem.path}: {problem.reason}", err=True)


def check_choice(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    """InputError when ``value`` (given for ``option``) is not one of ``choices``."""
    if value is not None and value not in choices:
        raise InputError(f"unknown {option} {value!r}", f"use one of {', '.join(choices)}")

"""Progress bars for long work (rich) on stderr, hidden by ``--quiet``.

On a terminal a bar redraws as work goes on; when stderr is redirected (a log file, CI) rich writes each
bar once, in its final state, so a log keeps one line per step of work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

_state = {"quiet": False}
stderr_console = Console(stderr=True)


def set_quiet(quiet: bool) -> None:
    """Hide (``True``) or show progress bars and informational messages for this process."""
    _state["quiet"] = quiet


def is_quiet() -> bool:
    """Whether ``--quiet`` is in force."""
    return _state["quiet"]


def progress(items: Iterable[T], total: int | None = None, description: str = "working") -> Iterator[T]:
    """Iterate over ``items`` with a progress bar on stderr (none when quiet)."""
    if is_quiet():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr_console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)

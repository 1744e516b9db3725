"""``radlens phantom ...``: generate and look at RadPhantom datasets."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the ``phantom`` command group (filled in by the phantom generator)."""
    del app

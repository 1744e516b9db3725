"""The ``radlens eval`` command group, shared by every module that adds an evaluation command.

A command module adds its command to :data:`eval_app` (``@eval_app.command("retrieval")``) and calls
:func:`register` from its own ``register(app)``; the group is attached to the app once, however many
modules call it, and in any order (Typer builds the command tree only when the CLI runs).
"""

from __future__ import annotations

import typer

eval_app = typer.Typer(
    help="Evaluate models: retrieval metrics, explanation quality.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Attach the ``eval`` group to ``app`` unless it is already attached."""
    if any(group.typer_instance is eval_app for group in app.registered_groups):
        return
    app.add_typer(eval_app, name="eval")


__all__ = ["eval_app", "register"]

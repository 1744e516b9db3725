"""The ``radlens`` Typer app: global options, error handling, and the command groups.

Each command group lives in its own module under ``radlens.cli`` and exposes ``register(app)``;
:data:`_COMMAND_MODULES` lists them. Errors follow one rule: a user-fixable problem
(:class:`radlens.core.InputError`, a bad option) prints one line on stderr and exits 2; anything
else prints one line and exits 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import errno
import importlib
import sys
import traceback
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup
from typer.main import get_command

from radlens import __version__
from radlens.core import RadlensError, set_quiet
from radlens.core.progress import stderr_console

_COMMAND_MODULES = (
    "radlens.cli.info_cmd",
    "radlens.cli.phantom_cmd",
    "radlens.cli.data_cmd",
    "radlens.cli.label_cmd",
    "radlens.cli.train_cmd",
    "radlens.cli.classifier_cmd",
    "radlens.cli.retrieval_cmd",
    "radlens.cli.explain_cmd",
    "radlens.cli.serve_cmd",
    "radlens.cli.demo_cmd",
)


#: OSError numbers that mean "this location cannot take the output" (a full disk, a read-only mount, a
#: lost permission): the user can act on them, so they get the one-line error, not "internal error".
_CANNOT_WRITE = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}
)


class _Interrupted(Exception):
    """Ctrl-C during a command; its ``__cause__`` is the KeyboardInterrupt (with where it happened)."""


class _RadlensGroup(TyperGroup):
    """The root command group. Typer turns a KeyboardInterrupt into a silent exit 130, losing where it
    happened; this hands it on to :func:`main` as :class:`_Interrupted` instead."""

    def invoke(self, ctx: Any) -> Any:
        """Run the command (and its group callbacks), passing Ctrl-C on as :class:`_Interrupted`."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc


app = typer.Typer(
    cls=_RadlensGroup,
    name="radlens",
    help="Vision-language and generative models for radiology, with explanations that can be checked. "
    "Research use only — not for diagnosis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = {"on": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"radlens {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide progress bars and informational output."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """radlens: retrieval, report generation, image generation and explainability for chest X-rays."""
    set_quiet(quiet)
    _debug["on"] = debug


for _module_name in _COMMAND_MODULES:
    importlib.import_module(_module_name).register(app)


def _error(message: str) -> None:
    # escape(): a message can quote user input such as "--view [/x]", which Rich would read as markup.
    stderr_console.print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True
    )


def _usage_message(message: str) -> str:
    """Click's usage error without echoing stray arguments: an unquoted query's words would be shown."""
    if message.startswith("Got unexpected extra argument"):
        return (
            "unexpected extra arguments (not shown); quote a value with spaces, e.g. --text 'left effusion'"
        )
    return message.replace("\n", " ")


def _interrupted(cause: BaseException, debug: bool) -> int:
    """Say that the command was interrupted (with --debug, where: e.g. a command that seemed to hang)
    and return the exit code of a Ctrl-C, 130."""
    if debug:
        traceback.print_exception(cause)
    _error("interrupted")
    return 130


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return (and, as a script, exit with) its exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    command = get_command(app)
    try:
        result = command.main(args=args, prog_name="radlens", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except _Interrupted as exc:
        code = _interrupted(exc.__cause__ or exc, debug)
    except typer.Abort as exc:  # end of input (EOFError) at a prompt
        code = _interrupted(exc.__cause__ or exc, debug)
    except typer.TyperException as exc:  # bad usage: unknown option, missing argument, bad value
        # Typer vendors click; its usage errors derive from TyperException and carry these attributes.
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _error(_usage_message(message) + hint)
        code = int(getattr(exc, "exit_code", 2))
    except RadlensError as exc:
        if debug:
            traceback.print_exc()
        _error(exc.one_line())
        code = exc.exit_code
    except KeyboardInterrupt as exc:  # outside the command (e.g. while the CLI is set up)
        code = _interrupted(exc, debug)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, OSError) and exc.errno in _CANNOT_WRITE:
            where = f" ({exc.filename})" if exc.filename else ""
            _error(f"{exc.strerror}{where}: free some space or choose a location you can write to")
            code = 2
        else:
            # The first line only: an exception re-raised from a DataLoader worker carries the worker's
            # whole traceback in its message, which is what --debug is for.
            first = str(exc).strip().split("\n", 1)[0]
            _error(
                f"internal error: {exc.__class__.__name__}: {first} (rerun with --debug for the traceback)"
            )
            code = 1
    if argv is None:
        sys.exit(code)
    return code

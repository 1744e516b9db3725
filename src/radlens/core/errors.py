"""Errors a user can act on.

Raise :class:`InputError` for anything the user can fix (bad argument, unreadable file, wrong folder):
the CLI prints its message as one line on stderr and exits with code 2. Any other exception is an
internal failure: one line, exit code 1, the traceback only with ``--debug``.
"""

from __future__ import annotations


class RadlensError(Exception):
    """Base class of radlens's own errors. ``hint`` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The message and the hint joined on one line, as the CLI prints them.

        Line breaks inside either (a quoted exception, a file name) become single spaces.
        """
        text = _single_line(self.message).rstrip(".")
        return f"{text}: {_single_line(self.hint)}" if self.hint else text


def _single_line(text: str) -> str:
    """``text`` with every line break (and the blanks around it) replaced by one space."""
    lines = text.splitlines()
    if lines == [text]:  # no line break
        return text
    return " ".join(line.strip() for line in lines if line.strip())


class InputError(RadlensError):
    """Bad usage or bad input: exit code 2."""

    exit_code = 2

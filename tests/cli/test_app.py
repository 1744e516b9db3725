"""The CLI's contract: --version, info, and one-line errors with the right exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer

from radlens import __version__
from radlens.cli import app, main
from radlens.core import InputError


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"radlens {__version__}"


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["radlens"] == __version__
    assert {"torch", "numpy", "torch_threads", "gpu"} <= set(facts)


def test_unknown_option_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--nope" in err and "radlens info --help" in err
    assert len(err.splitlines()) == 1


def test_stray_words_of_an_unquoted_query_are_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["search", "--index", "idx", "--model", "m", "--text", "Mr", "Smith", "zebra", "quantum"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unexpected extra arguments") and "quote" in err
    assert "Smith" not in err and "zebra" not in err and len(err.splitlines()) == 1


@pytest.mark.usefixtures("failing_commands")
def test_error_text_is_printed_literally_not_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["raise-markup"]) == 2  # Rich would raise MarkupError on "[/x]" and drop "[red]"
    assert capsys.readouterr().err.strip() == "error: unknown view '[/x]' or '[red]': use PA"


def _raise_markup_error() -> None:
    raise InputError("unknown view '[/x]' or '[red]'", "use PA")


def _raise_input_error() -> None:
    raise InputError("the thing is wrong", "pass a better thing")


def _raise_bug() -> None:
    raise ZeroDivisionError("boom")


@pytest.fixture
def failing_commands() -> None:
    app.command("raise-input")(_raise_input_error)
    app.command("raise-bug")(_raise_bug)
    app.command("raise-markup")(_raise_markup_error)
    yield
    app.registered_commands[:] = [
        c for c in app.registered_commands if c.name not in {"raise-input", "raise-bug", "raise-markup"}
    ]


@pytest.mark.usefixtures("failing_commands")
def test_input_error_exit_2_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["raise-input"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: the thing is wrong: pass a better thing"
    assert "Traceback" not in err


@pytest.mark.usefixtures("failing_commands")
def test_internal_error_exit_1_traceback_only_with_debug(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["raise-bug"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: boom" in err and "Traceback" not in err
    assert main(["--debug", "raise-bug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_every_command_has_help() -> None:
    command = typer.main.get_command(app)
    names = list(command.commands)  # type: ignore[attr-defined]
    assert "info" in names
    for name in names:
        assert main([name, "--help"]) == 0


def test_console_script_exit_code() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "radlens.cli", "info", "--bogus"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1

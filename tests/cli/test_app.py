"""The CLI's contract: --version, info, and one-line errors with the right exit codes."""

from __future__ import annotations

import errno
import json
import os
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


def _raise_worker_error() -> None:
    # What torch re-raises for an error in a DataLoader worker: the worker's traceback in the message.
    raise RuntimeError(
        "Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  x"
    )


def _raise_disk_full() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/.x.partial/model.safetensors")


def _raise_io_error() -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO), "/data/out/x")


def _interrupted_while_working() -> None:
    raise KeyboardInterrupt  # what Ctrl-C raises in the middle of a command


@pytest.fixture
def failing_commands() -> None:
    app.command("raise-input")(_raise_input_error)
    app.command("raise-bug")(_raise_bug)
    app.command("raise-markup")(_raise_markup_error)
    app.command("raise-interrupt")(_interrupted_while_working)
    app.command("raise-worker")(_raise_worker_error)
    app.command("raise-disk-full")(_raise_disk_full)
    app.command("raise-io")(_raise_io_error)
    yield
    names = {"raise-input", "raise-bug", "raise-markup", "raise-interrupt", "raise-worker", "raise-disk-full"}
    names |= {"raise-io"}
    app.registered_commands[:] = [c for c in app.registered_commands if c.name not in names]


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


@pytest.mark.usefixtures("failing_commands")
def test_an_internal_error_is_one_line_even_from_a_worker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["raise-worker"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: internal error: RuntimeError: Caught OSError in DataLoader worker process 0. "
        "(rerun with --debug for the traceback)"
    )


@pytest.mark.usefixtures("failing_commands")
def test_a_full_disk_is_the_users_to_fix_other_os_errors_are_internal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["raise-disk-full"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: No space left on device (/data/out/.x.partial/model.safetensors): free some space or "
        "choose a location you can write to"
    )
    assert main(["raise-io"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: internal error: OSError: [Errno 5]")


@pytest.mark.usefixtures("failing_commands")
def test_ctrl_c_exits_130_with_the_traceback_only_with_debug(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["raise-interrupt"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "error: interrupted" and "Traceback" not in err
    assert main(["--debug", "raise-interrupt"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" in err and "_interrupted_while_working" in err
    assert err.strip().splitlines()[-1] == "error: interrupted"


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

"""Helpers shared by the CLI tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

#: The modules that make a failing command slow (~5 s to import): options must be checked before them.
HEAVY_MODULES = ("torch", "transformers")

_SCRIPT = """
import contextlib, io, json, sys
from radlens.cli.app import main
runs = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    heavy = [name for name in json.loads(sys.argv[2]) if name in sys.modules]
    runs.append({"code": code, "stderr": err.getvalue(), "heavy": heavy})
print(json.dumps(runs))
"""


@dataclass(frozen=True)
class FreshRun:
    """What one ``radlens ARGS`` call did: its exit code, its stderr, and which of
    :data:`HEAVY_MODULES` had been imported by the time it returned."""

    code: int
    stderr: str
    heavy_imported: tuple[str, ...]


def run_in_fresh_interpreter(commands: Sequence[list[str]]) -> list[FreshRun]:
    """Run ``radlens.cli.main(args)`` for each of ``commands`` in turn, in one new Python process (a
    test process has torch loaded already); a run's ``heavy_imported`` counts the earlier runs too."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(list(commands)), json.dumps(HEAVY_MODULES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return [FreshRun(run["code"], run["stderr"], tuple(run["heavy"])) for run in json.loads(done.stdout)]


def assert_fail_before_the_model_stack(cases: Sequence[tuple[list[str], str]]) -> None:
    """Each ``(args, message)``: ``radlens ARGS`` exits 2 with one error line containing ``message`` and
    imports neither torch nor transformers (a mistyped option costs a second, not six)."""
    runs = run_in_fresh_interpreter([args for args, _ in cases])
    for (args, message), run in zip(cases, runs, strict=True):
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, run.stderr)
        assert message in lines[0], (args, message, run.stderr)
        assert run.code == 2, (args, run)
        assert run.heavy_imported == (), (args, run)

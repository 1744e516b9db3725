"""RadPhantom writer: stopped runs (SIGTERM, SIGKILL), awkward output locations and worker counts."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import radlens.phantom.writer as writer
from radlens.cli import main
from radlens.phantom.spec import PhantomConfig

SMALL = PhantomConfig(studies=4, size=64, seed=3, workers=1)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# A run long enough to be stopped mid-way: two workers, many studies, in a fresh interpreter.
_LONG_RUN = textwrap.dedent(
    """
    import sys
    from radlens.phantom.spec import PhantomConfig
    from radlens.phantom.writer import generate_dataset
    generate_dataset(PhantomConfig(studies=20000, size=128, seed=1, workers=2), sys.argv[1])
    """
)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_long_run(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Start :data:`_LONG_RUN` into ``tmp_path/out``; return it once its workers are writing studies."""
    process = subprocess.Popen(
        [sys.executable, "-c", _LONG_RUN, str(tmp_path / "out")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not any((partial / "files").exists() for partial in tmp_path.glob(".out.*.partial")):
        assert process.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.05)
    workers = _children(process.pid)
    assert len(workers) == 2
    return process, workers


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    """Wait up to ``seconds`` for ``pids`` to end; return those still running."""
    deadline = time.monotonic() + seconds
    while (left := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _kill(pids: list[int]) -> None:
    for pid in pids:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


@linux_only
@pytest.mark.slow
def test_sigterm_removes_partial_folder_and_stops_workers(tmp_path: Path) -> None:
    """``kill``/``timeout`` send SIGTERM: the run unwinds like Ctrl-C instead of dying on the spot."""
    process, workers = _start_long_run(tmp_path)
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        assert _wait_gone(workers) == []  # no orphaned worker left waiting forever
    finally:
        _kill(workers)
    assert list(tmp_path.iterdir()) == []  # no output folder, no temporary leftovers


@linux_only
@pytest.mark.slow
def test_workers_end_when_main_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL cannot be caught, but the workers must not outlive the main process."""
    process, workers = _start_long_run(tmp_path)
    process.kill()
    process.wait(timeout=60)
    try:
        assert _wait_gone(workers) == []
    finally:
        _kill(workers)


def test_sigterm_handler_is_restored(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    writer.generate_dataset(SMALL, tmp_path / "out")
    assert signal.getsignal(signal.SIGTERM) == before


def test_cli_refuses_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    options = ["--studies", "2", "--size", "64", "--workers", "1"]
    assert main(["phantom", "generate", "--out", ".", *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "current folder" in err
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = {"n": 0}
    real = writer._write

    def filling(path: str, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(path, data)

    monkeypatch.setattr(writer, "_write", filling)
    options = ["--studies", "4", "--size", "64", "--workers", "1"]
    assert main(["-q", "phantom", "generate", "--out", str(tmp_path / "out"), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: No space left on device"), err
    assert calls["n"] == 5
    assert list(tmp_path.iterdir()) == []  # the partial folder went with the run


def test_workers_capped_at_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process per study for --workers 100000 would only cost forks: at most one per core."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert writer._resolve_workers(100_000, 100_000) == 3
    assert writer._resolve_workers(0, 100) == 3
    assert writer._resolve_workers(2, 100) == 2
    assert writer._resolve_workers(0, 1) == 1

from __future__ import annotations

import os
from pathlib import Path

import pytest

from radlens.core import (
    InputError,
    atomic_directory,
    atomic_write_file,
    atomic_write_text,
    prepare_output_dir,
)


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_directory_success_and_failure(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("interrupted")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the partial folder was removed too

    with atomic_directory(out) as tmp:
        (tmp / "done.txt").write_text("y")
    assert (out / "done.txt").read_text() == "y"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_modes_plain_open_and_mkdir_would(tmp_path: Path, umask: int) -> None:
    """mkstemp / mkdtemp make 0600 files and 0700 folders: a checkpoint or index another user (a web
    server) must read would be unreadable to it."""
    previous = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "inner.txt").write_text("x")
        written = atomic_write_file(tmp_path / "blob.bin", lambda tmp: tmp.write_bytes(b"abc"))
    finally:
        os.umask(previous)
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask
    assert written.read_bytes() == b"abc" and written.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_file_removes_the_temporary_file_on_failure(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_file(tmp_path / "out.bin", fail)
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_non_empty_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(InputError, match="--overwrite"), atomic_directory(out):
        pass
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    with pytest.raises(InputError, match="is a file"):
        prepare_output_dir(path, overwrite=True)


def test_unwritable_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root in CI, where permission bits do not stop writes; simulate the OS answer.
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if Path(path) == tmp_path else real_access(path, mode)
    )
    with pytest.raises(InputError, match="cannot write"):
        prepare_output_dir(tmp_path / "out", overwrite=False)

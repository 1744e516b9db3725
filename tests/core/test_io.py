from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from radlens.core import (
    InputError,
    atomic_directory,
    atomic_write_file,
    atomic_write_text,
    check_writable_folder,
    prepare_output_dir,
)
from radlens.core import io as core_io
from radlens.core.io import _umask


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
    # --overwrite replaces only what radlens wrote: a folder of someone's own files stays.
    with pytest.raises(InputError, match="holds files radlens did not write"), atomic_directory(out, True):
        pass
    for marker, text in (("config.json", '{"model_type": "x"}'), ("index.json", "[1]"), ("config.json", "{")):
        (out / marker).write_text(text)  # a JSON file that is not a radlens checkpoint's or index's
        with pytest.raises(InputError, match="did not write"), atomic_directory(out, True):
            pass
    for marker, text in (("index.json", '{"radlens_version": "0.1.0"}'), ("versions.json", "{}")):
        (out / marker).write_text(text)
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
        assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    with pytest.raises(InputError, match="is a file"):
        prepare_output_dir(path, overwrite=True)


def test_an_output_folder_may_not_be_or_hold_an_input(tmp_path: Path) -> None:
    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    for out, relation in ((data, "is"), (tmp_path / "link", "is"), (tmp_path / "work", "holds")):
        for overwrite in (False, True):
            with pytest.raises(InputError, match=f"{relation} the input"):
                prepare_output_dir(out, overwrite, inputs=(None, data))
    # Beside or inside an input is fine: replacing it deletes nothing the command reads.
    assert prepare_output_dir(tmp_path / "work" / "run", False, inputs=(data,)) == tmp_path / "work" / "run"
    assert prepare_output_dir(data / "run", False, inputs=(data, None)) == data / "run"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_location_nothing_can_be_created_in(tmp_path: Path) -> None:
    # /proc refuses new folders even to root, for whom os.access() says yes everywhere (CI runs as root).
    with pytest.raises(InputError, match="cannot write to /proc"):
        prepare_output_dir("/proc/radlens-test/out", overwrite=False)
    assert check_writable_folder(tmp_path / "new" / "out") == tmp_path
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind


@pytest.mark.parametrize(("cwd", "given"), [("here", "."), ("here", "sub/.."), ("here/sub", "..")])
def test_the_current_folder_or_one_above_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cwd: str, given: str
) -> None:
    (tmp_path / "here" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / cwd)
    for overwrite in (False, True):
        with pytest.raises(InputError, match="is the current folder or holds it"):
            prepare_output_dir(given, overwrite)


def test_a_path_ending_in_dot_dot_is_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "other" / "versions.json").write_text("{}")  # an earlier radlens output
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with atomic_directory("../other/sub/..", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "other"]


@pytest.mark.parametrize("proc", [True, False])  # False: a system without /proc/self/status
def test_concurrent_umask_reads_neither_see_nor_leave_a_wrong_umask(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, proc: bool
) -> None:
    """Reading the umask by setting it to 0 and back is a race between threads (the web app's worker
    threads, a DataLoader's): two readers interleaving left the process umask at 0, so every file
    created afterwards was world-writable. ``os.umask`` is made to yield to other threads after each
    call, so the interleaving that happens now and then in real runs happens in every run here."""
    real_umask = os.umask

    def yielding_umask(mask: int) -> int:
        old = real_umask(mask)
        time.sleep(0.0001)
        return old

    threads_n, calls = 4, 100
    seen: list[set[int]] = [set() for _ in range(threads_n)]
    start = threading.Barrier(threads_n)

    def read(slot: int) -> None:
        start.wait()
        for _ in range(calls):
            seen[slot].add(_umask())

    if not proc:
        monkeypatch.setattr(core_io, "_PROC_STATUS", str(tmp_path / "absent"), raising=False)
    previous = real_umask(0o027)
    monkeypatch.setattr(os, "umask", yielding_umask)
    try:
        threads = [threading.Thread(target=read, args=(slot,)) for slot in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        left = real_umask(0o027)
    finally:
        real_umask(previous)
    assert set().union(*seen) == {0o027}
    assert left == 0o027


@pytest.mark.parametrize("name", ["r" * 250 + ".json", "é" * 126 + "a.j"])  # 255 bytes: the limit
def test_names_at_the_length_limit_are_writable(tmp_path: Path, name: str) -> None:
    """The temporary sibling (".NAME.xxxxxxxx.tmp") must fit in a path component too."""
    assert len(os.fsencode(name)) == 255
    written = atomic_write_text(tmp_path / name, "text")
    assert written.read_text() == "text"
    with atomic_directory(tmp_path / "dirs" / name) as tmp:
        (tmp / "versions.json").write_text("{}")
    with atomic_directory(tmp_path / "dirs" / name, overwrite=True) as tmp:  # the replace path
        (tmp / "inner.txt").write_text("y")
    assert (tmp_path / "dirs" / name / "inner.txt").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dirs", name])
    assert [p.name for p in (tmp_path / "dirs").iterdir()] == [name]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_replacing_a_file_keeps_its_permission_bits(tmp_path: Path, mode: int) -> None:
    """As a plain ``open(path, "w")`` would: results a user made private must not become readable."""
    target = tmp_path / "results.json"
    target.write_text("old")
    target.chmod(mode)
    previous = os.umask(0o022)
    try:
        atomic_write_text(target, "new")
    finally:
        os.umask(previous)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == mode


def test_failed_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Overwriting moves the old folder aside and the new one in; a failure between the two moves
    (here: the second rename fails) must leave the old output where it was and no litter."""
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "versions.json").write_text("{}")
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(src).endswith(".partial"):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt", "versions.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]

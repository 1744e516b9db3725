"""Atomic output: nothing half-written is ever left where a user would find it.

Files are written to a temporary sibling and renamed into place; folders are built under a temporary
sibling and renamed when complete. An interrupted run leaves the old output (or nothing) behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from radlens.core.errors import InputError


def _umask() -> int:
    """The process umask (setting it is the only way to read it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_file(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place.

    For writers that need a file name (``faiss.write_index``, Pillow, ...). The file gets the mode a
    plain ``open()`` would give (``mkstemp`` makes it 0600); on any exception it is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
        write(Path(tmp_name))
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    return atomic_write_file(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def prepare_output_dir(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check that ``path`` can become an output folder, without creating it.

    Raises :class:`InputError` when it exists and is not empty (unless ``overwrite``), is a file,
    or its parent cannot be written.
    """
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise InputError(f"output path {target} is a file", "choose a folder path for --out")
        if any(target.iterdir()) and not overwrite:
            raise InputError(
                f"output folder {target} is not empty", "choose an empty folder or pass --overwrite"
            )
    check_writable_folder(target.resolve().parent)
    return target


def check_writable_folder(folder: str | os.PathLike[str]) -> Path:
    """The nearest existing folder at or above ``folder`` (where it would be created), checked.

    Raises :class:`InputError` when that is a file (``folder`` is or lies under a file) or cannot be
    written, so a command can refuse an output location before doing any work.
    """
    probe = Path(folder).resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"output path {probe} is a file", "choose a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {probe}", "choose a location you can write to")
    return probe


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only when the ``with`` block succeeds.

    On any exception (including Ctrl-C) the temporary folder is removed and ``path`` is untouched.
    """
    target = prepare_output_dir(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700: give the folder the mode mkdir() would
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, trash / target.name)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, target)

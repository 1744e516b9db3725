"""Atomic output: nothing half-written is ever left where a user would find it.

Files are written to a temporary sibling and renamed into place; folders are built under a temporary
sibling and renamed when complete. An interrupted run leaves the old output (or nothing) behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from radlens.core.errors import InputError

#: The file every radlens run writes beside its outputs (:func:`radlens.core.write_run_metadata`).
VERSIONS_FILE = "versions.json"

_UMASK_LOCK = threading.Lock()
_PROC_STATUS = "/proc/self/status"  # Linux: holds the umask ("Umask:\t0022")
_NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems
_RANDOM_CHARS = 8  # what tempfile adds between prefix and suffix


def _umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in ``/proc/self/status``. Elsewhere setting it is the only way to read it: that
    is done under a lock (two threads doing set-then-restore at once could leave the process umask at
    the value one of them set) and sets the restrictive 0o077 meanwhile, so a file another thread
    creates in that instant is private rather than world-writable.
    """
    try:
        with open(_PROC_STATUS, encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _temp_prefix(name: str, suffix: str) -> str:
    """``.NAME.`` for a temporary sibling of ``name``, ``NAME`` shortened so that the temporary name
    (prefix, tempfile's random characters, ``suffix``) fits in one path component: a target whose
    own name is near the limit must still be writable."""
    room = _NAME_MAX - len(os.fsencode(suffix)) - _RANDOM_CHARS - 2  # the two dots
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}."


def atomic_write_file(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place.

    For writers that need a file name (``faiss.write_index``, Pillow, ...). The file gets the mode a
    plain ``open()`` would give (``mkstemp`` makes it 0600): a new file ``0o666`` less the umask, a
    replaced file its old permission bits (a results file made private stays private). On any
    exception the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp"
    fd, tmp_name = tempfile.mkstemp(
        prefix=_temp_prefix(target.name, suffix), suffix=suffix, dir=target.parent
    )
    try:
        try:
            os.fchmod(fd, _file_mode(target))
        finally:
            os.close(fd)
        write(Path(tmp_name))
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return target


def _file_mode(target: Path) -> int:
    """The permission bits ``open(target, "w")`` would leave: the existing file's, else 0o666 & ~umask."""
    try:
        existing = os.stat(target)
    except OSError:
        existing = None
    if existing is not None and stat.S_ISREG(existing.st_mode):
        return stat.S_IMODE(existing.st_mode) & 0o777  # not set-id bits: writing clears them
    return 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    return atomic_write_file(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def prepare_output_dir(
    path: str | os.PathLike[str],
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Check that ``path`` can become an output folder, without creating it.

    Raises :class:`InputError` when it exists and is not empty (unless ``overwrite``), is a file, or
    its parent cannot be written; and when it is, or holds, one of the command's ``inputs`` (``None``
    entries are skipped): replacing it would delete what the command reads, e.g. ``--out`` given the
    ``--data`` folder with ``--overwrite``. ``overwrite`` replaces only a folder radlens wrote (with
    ``versions.json``, or the ``config.json`` / ``index.json`` of a checkpoint / index): a mistyped
    ``--out`` naming someone's own folder (a home folder, a dataset) is refused, not deleted.
    """
    target = Path(path)
    _check_not_an_input(target, inputs)
    _check_not_the_current_folder(target)
    if target.exists():
        if not target.is_dir():
            raise InputError(f"output path {target} is a file", "choose a folder path for --out")
        if any(target.iterdir()):
            if not overwrite:
                raise InputError(
                    f"output folder {target} is not empty", "choose an empty folder or pass --overwrite"
                )
            if not _written_by_radlens(target):
                raise InputError(
                    f"output folder {target} holds files radlens did not write",
                    "--overwrite replaces only radlens outputs: empty it yourself or choose another folder",
                )
    check_writable_folder(target.resolve().parent)
    return target


def _written_by_radlens(folder: Path) -> bool:
    """Whether ``folder`` is a radlens output: a run's ``versions.json``, or the ``config.json`` of a
    checkpoint or ``index.json`` of an index (both record ``radlens_version``)."""
    if (folder / VERSIONS_FILE).is_file():
        return True
    for name in ("config.json", "index.json"):
        try:
            document = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and "radlens_version" in document:
            return True
    return False


def _check_not_the_current_folder(target: Path) -> None:
    """InputError when ``target`` is the current folder or lies above it: replacing it would pull the
    folder out from under the shell that started the command (and ``.`` cannot be renamed at all)."""
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was deleted: nothing to protect
        return
    where = target.resolve()
    if where == here or where in here.parents:
        raise InputError(
            f"output folder {target} is the current folder or holds it", "choose a new folder, e.g. --out run"
        )


def _check_not_an_input(target: Path, inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """InputError when the folder ``target`` is one of ``inputs`` or lies above one (links resolved)."""
    where = target.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if source == where or where in source.parents:
            relation = "is" if source == where else "holds"
            raise InputError(
                f"output folder {target} {relation} the input {given}, which writing it would delete",
                "choose an output folder outside the inputs",
            )


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
    # Ask the file system, not os.access: that answers yes to root everywhere, also where nothing can
    # be created (/proc, a read-only mount, an immutable folder).
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".radlens-", suffix=".probe", dir=probe))
    except OSError as exc:
        raise InputError(
            f"cannot write to {probe} ({exc.strerror or exc.__class__.__name__})",
            "choose a location you can write to",
        ) from exc
    return probe


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only when the ``with`` block succeeds.

    ``path`` is checked first by :func:`prepare_output_dir` (``overwrite``, ``inputs``).

    On any exception (including Ctrl-C) the temporary folder is removed and ``path`` is untouched;
    that holds while an existing ``path`` is being replaced too (it is moved aside, the new folder
    moved in, and on a failure between the two moves the old folder is put back).
    """
    prepare_output_dir(path, overwrite, inputs)
    target = Path(os.path.abspath(path))  # "x/..": the folder needs a name of its own to be renamed
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=_temp_prefix(target.name, ".partial"), suffix=".partial", dir=target.parent)
    )
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700: give the folder the mode mkdir() would
        yield tmp
        if target.exists():
            _swap_in(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    """Replace the folder ``target`` by ``new``; the old one is deleted, or put back on any failure."""
    trash = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name, ".old"), suffix=".old", dir=target.parent))
    old = trash / target.name
    try:
        os.replace(target, old)
    except BaseException:
        shutil.rmtree(trash, ignore_errors=True)
        raise
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)  # should this fail too, the old folder is kept in ``trash``
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)

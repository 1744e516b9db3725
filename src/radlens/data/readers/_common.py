"""Plumbing every reader shares: problem recording, tables with clear errors, filters, folder listings.

The problem policy lives here (docs/data.md, "Problems and --strict"): a reader never crashes half-way
and never drops an item silently. In the default mode a bad item (image, report, table row, study) is
skipped and recorded as ``Problem(path, reason)``; with ``strict=True`` the first problem raises
:class:`InputError`. Every ``Problem`` is one skipped item. A reason reads ``"<kind>: <details>"`` or
just ``"<kind>"``, so summaries can group problems by the part before the first colon.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import pandas as pd

from radlens.core import InputError
from radlens.data.images import MAX_PIXELS, MIN_SIDE, ImageDecodeError, load_image, probe_image
from radlens.data.schema import (
    CHEXPERT_LABELS,
    POSITIVE,
    SPLITS,
    VIEW_POSITIONS,
    ImageRecord,
    LabelValue,
    Problem,
    ReportSections,
    normalize_label,
)

T = TypeVar("T")
R = TypeVar("R")

#: How much each image is looked at while reading: not at all (paths only, fast), its header
#: (``probe_image``: format, height, width), or a full decode (``load_image``: catches truncation).
ImageCheck = Literal["none", "header", "decode"]
IMAGE_CHECKS: tuple[str, ...] = ("none", "header", "decode")

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validate": "validate",
    "validation": "validate",
    "valid": "validate",
    "val": "validate",
    "dev": "validate",
    "test": "test",
    "testing": "test",
}


class ProblemLog:
    """Collects skipped items; in strict mode the first one raises :class:`InputError` instead."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.problems: list[Problem] = []

    def add(self, path: str | os.PathLike[str], reason: str) -> None:
        """Record that the item at ``path`` was skipped because of ``reason`` (or raise when strict)."""
        if self.strict:
            raise InputError(
                f"{path}: {reason}", "fix or remove that item, or read without --strict to skip bad items"
            )
        self.problems.append(Problem(str(path), reason))


def problem_kind(reason: str) -> str:
    """The group a problem reason belongs to: the text before its first colon."""
    return reason.split(":", 1)[0].strip()


def require_dir(path: str | os.PathLike[str], what: str, hint: str) -> Path:
    """``path`` as a folder, or :class:`InputError` saying what folder was expected."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise InputError(f"{what} {folder} not found", hint)
    if not folder.is_dir():
        raise InputError(f"{what} {folder} is a file, not a folder", hint)
    return folder


def require_file(path: str | os.PathLike[str], what: str, hint: str) -> Path:
    """``path`` as a file, or :class:`InputError` saying what file was expected."""
    file = Path(path).expanduser()
    if not file.is_file():
        state = "is a folder, not a file" if file.is_dir() else "not found"
        raise InputError(f"{what} {file} {state}", hint)
    return file


def find_table(folder: Path, stem: str) -> Path | None:
    """``stem.csv.gz``, else ``stem.csv`` (a user may have unpacked it), in ``folder``; ``None`` if neither."""
    for suffix in (".csv.gz", ".csv"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _open_text_table(path: Path) -> io.StringIO:
    """The decoded text of a CSV that may be gzipped, checked for gzip damage and non-UTF-8 bytes."""
    data = path.read_bytes()
    # Decide by content, not by name: some tools (browsers, download managers) unpack ``.csv.gz``
    # transparently and leave plain text under the ``.gz`` name. Real damage still fails below.
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(
                f"{path} is a damaged gzip file ({exc.__class__.__name__}: {exc})",
                "download or copy it again; `gzip -t` checks it",
            ) from exc
    try:
        return io.StringIO(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not UTF-8 text (invalid byte at offset {exc.start})",
            "it should be a CSV file; re-save it as UTF-8",
        ) from exc


def read_csv(path: Path, required: Sequence[str], *, dtype: Any = str, sep: str = ",") -> pd.DataFrame:
    """Read a (possibly gzipped) CSV with pandas; :class:`InputError` naming the file on any damage.

    ``required`` columns must all be present; everything is read as text unless ``dtype`` says otherwise.
    """
    text = _open_text_table(path)
    try:
        frame = pd.read_csv(text, dtype=dtype, sep=sep, skipinitialspace=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(f"{path} is not a readable CSV table ({first})", "check the file") from exc
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise InputError(
            f"{path} lacks the column(s) {', '.join(missing)}",
            f"expected columns include {', '.join(required)}; is this the right file?",
        )
    return frame


def table_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of a table read by :func:`read_csv` as dicts (its column names are strings)."""
    return cast(list[dict[str, Any]], frame.to_dict("records"))


def read_optional_csv(path: Path, required: Sequence[str], log: ProblemLog) -> pd.DataFrame | None:
    """Like :func:`read_csv` for a table the reader can do without: a damaged one is one problem."""
    try:
        return read_csv(path, required)
    except InputError as exc:
        log.add(path, f"table unreadable: {exc.message}")
        return None


def cell(value: Any) -> str | None:
    """A table cell as stripped text; ``None`` for blank or NaN."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    text = str(value).strip()
    return text or None


def normalize_split(value: Any) -> str | None:
    """``train`` / ``validate`` / ``test`` from common spellings; ``None`` when blank or unknown."""
    text = cell(value)
    return _SPLIT_ALIASES.get(text.lower()) if text else None


def normalize_view(value: Any) -> str | None:
    """A view position in upper case (``"PA"``, ``"LATERAL"``); ``None`` when blank."""
    text = cell(value)
    return text.upper() if text else None


def parse_labels(row: Mapping[str, Any], columns: Iterable[str]) -> dict[str, LabelValue]:
    """The CheXpert labels of a table row; ``ValueError`` naming the column on a bad value."""
    labels: dict[str, LabelValue] = {}
    for name in columns:
        try:
            labels[name] = normalize_label(row.get(name))
        except ValueError as exc:
            raise ValueError(f"column {name!r}: {exc}") from exc
    return labels


@dataclass(frozen=True, slots=True)
class Filters:
    """Which studies and images a reader keeps. ``None`` keeps everything.

    ``views`` keeps only images with one of these view positions (a study without any is left out);
    ``splits`` keeps studies of these official splits; ``require_labels`` keeps studies labelled
    positive (1) for *every* listed observation. Filtered-out items are not problems.
    """

    views: frozenset[str] | None = None
    splits: frozenset[str] | None = None
    require_labels: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        views: Iterable[str] | None = None,
        splits: Iterable[str] | None = None,
        require_labels: Iterable[str] | None = None,
    ) -> Filters:
        """Validate user-given filter values (InputError listing the valid ones on a typo)."""
        view_set = None
        if views is not None:
            view_set = frozenset(v.strip().upper() for v in views)
            unknown = sorted(view_set - set(VIEW_POSITIONS))
            if unknown:
                raise InputError(
                    f"unknown view position(s) {', '.join(unknown)}", f"use {', '.join(VIEW_POSITIONS)}"
                )
        split_set = None
        if splits is not None:
            normalized = {s: normalize_split(s) for s in splits}
            unknown = sorted(s for s, value in normalized.items() if value is None)
            if unknown:
                raise InputError(f"unknown split(s) {', '.join(unknown)}", f"use {', '.join(SPLITS)}")
            split_set = frozenset(value for value in normalized.values() if value)
        labels: tuple[str, ...] = ()
        if require_labels is not None:
            by_key = {label_key(name): name for name in CHEXPERT_LABELS}
            resolved = [by_key.get(label_key(name)) for name in require_labels]
            unknown = sorted(n for n, r in zip(require_labels, resolved, strict=True) if r is None)
            if unknown:
                raise InputError(
                    f"unknown observation(s) {', '.join(unknown)}", f"use {', '.join(CHEXPERT_LABELS)}"
                )
            labels = tuple(r for r in resolved if r is not None)
        return cls(view_set, split_set, labels)

    def keep_image(self, image: ImageRecord) -> bool:
        """Whether an image passes the view filter."""
        return self.views is None or image.view_position in self.views

    def keep_study(self, split: str | None, labels: Mapping[str, LabelValue]) -> bool:
        """Whether a study passes the split and label filters (views are per image)."""
        if self.splits is not None and split not in self.splits:
            return False
        return all(labels.get(name) == POSITIVE for name in self.require_labels)


def label_key(name: str) -> str:
    """A label name compared loosely: ``"pleural_effusion"`` and ``"Pleural Effusion"`` match."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def slug(name: str) -> str:
    """RadPhantom's mask file slug of an observation: lower case, spaces to underscores."""
    return name.strip().lower().replace(" ", "_")


class FolderIndex:
    """Answers "does this file exist?" by listing each folder once, instead of one stat per file."""

    def __init__(self) -> None:
        self._listings: dict[str, frozenset[str]] = {}

    def names(self, folder: str | os.PathLike[str]) -> frozenset[str]:
        """The entry names of ``folder`` (empty when it does not exist or cannot be listed)."""
        key = os.fspath(folder)
        found = self._listings.get(key)
        if found is None:
            found = self._listings[key] = listdir(key)
        return found

    def exists(self, path: Path) -> bool:
        """Whether ``path`` is an entry of its (listed once) parent folder."""
        return path.name in self.names(path.parent)


def prefetch(function: Callable[[T], R], items: Sequence[T], chunk: int = 64, ahead: int = 8) -> Iterator[R]:
    """``function(item)`` for each item, in order, computed by a few threads running ahead of the caller.

    For file-system calls (listing a folder, reading a report): the threads wait on the disk while
    the caller parses, which matters on a cold cache or a network disk. Work is handed out in chunks
    (thread hand-offs cost more than reading a small file from the page cache) and at most ``ahead``
    chunks are in flight, so memory stays bounded. ``function`` must not raise: return the error.
    """
    chunks = [items[start : start + chunk] for start in range(0, len(items), chunk)]
    if len(chunks) <= 1:
        yield from (function(item) for item in items)
        return

    def run(part: Sequence[T]) -> list[R]:
        return [function(item) for item in part]

    with ThreadPoolExecutor(max_workers=min(4, len(chunks)), thread_name_prefix="radlens-read") as pool:
        queue = iter(chunks)
        pending: deque[Future[list[R]]] = deque(
            pool.submit(run, part) for part in itertools.islice(queue, ahead)
        )
        while pending:
            results = pending.popleft().result()
            part = next(queue, None)
            if part is not None:
                pending.append(pool.submit(run, part))
            yield from results


def listdir(folder: str) -> frozenset[str]:
    """Entry names of ``folder``; empty when it is missing or unreadable (never raises)."""
    try:
        return frozenset(os.listdir(folder))
    except OSError:
        return frozenset()


def read_bytes(path: str) -> bytes | OSError:
    """The bytes of ``path``, or the error reading it (never raises; for :func:`prefetch`)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        return exc


def bytes_problem(data: bytes | OSError, path: str | Path, log: ProblemLog, missing: str) -> bytes | None:
    """Record a failed :func:`read_bytes` as a problem (``missing`` when the file does not exist)."""
    if isinstance(data, FileNotFoundError):
        log.add(path, missing)
        return None
    if isinstance(data, OSError):
        log.add(path, f"report unreadable: {data.strerror or data.__class__.__name__}")
        return None
    return data


def decode_report(data: bytes, path: Path | str, log: ProblemLog) -> str | None:
    """Report bytes as text; ``None`` (and a problem) when not UTF-8 or empty.

    Not-UTF-8 reports are skipped rather than decoded with replacement characters: a report with
    garbled bytes is usually a wrong file or encoding, and models should not learn from it.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        log.add(path, f"report not UTF-8: invalid byte 0x{data[exc.start]:02x} at offset {exc.start}")
        return None
    if not text.strip():
        log.add(path, "report empty")
        return None
    return text


def report_fields(text: str) -> tuple[str, ReportSections]:
    """``(cleaned report text, parsed sections)`` the way every reader fills a StudyRecord."""
    from radlens.data.reports import clean_text, parse_report

    return clean_text(text), parse_report(text)


def check_image(path: Path, mode: str) -> str | None:
    """``None`` when the image passes ``mode`` (see :data:`ImageCheck`), else the problem reason.

    The size policy (``MIN_SIDE``, ``MAX_PIXELS``) is the one of :mod:`radlens.data.images`.
    """
    if mode == "none":
        return None
    try:
        if mode == "decode":
            load_image(path)
        else:
            probe_image(path)
    except ImageDecodeError as exc:
        return f"image unreadable: {exc.reason}"
    except Exception as exc:  # any other decoder failure is still a property of this one file
        return f"image unreadable: {exc.__class__.__name__}: {exc}"
    return None


def size_problem(height: int | None, width: int | None) -> str | None:
    """A problem reason when an index says an image's size is absurd (images.py's policy), else ``None``."""
    if height is None or width is None:
        return None
    if min(height, width) < MIN_SIDE or height * width > MAX_PIXELS:
        return (
            f"image size absurd: the index says {width}x{height} pixels "
            f"(accepted: sides >= {MIN_SIDE}, at most {MAX_PIXELS // 1_000_000} MP)"
        )
    return None


def no_images_error(expected: int, where: Path, hint: str) -> InputError:
    """The error for a read where none of the ``expected`` images exist: a wrong folder, not bad items."""
    return InputError(f"none of the {expected} image(s) the index lists exist under {where}", hint)

"""Your own data: a CSV/JSONL table of images and texts, or a folder of 2D slices.

Table columns (names are matched case-insensitively; other columns go to the study's metadata):

- image path (required): ``image``, ``path``, ``image_path``, ``file`` or ``filename``; relative paths
  are relative to ``image_root`` (default: the table's folder);
- text (optional): ``text``, ``report``, ``caption`` or ``findings``;
- optional ``study_id`` (rows sharing one form one multi-image study; without it every row is its
  own study, with the image path as its id), ``subject_id``/``patient_id``, ``split``,
  ``view``/``view_position``/``ViewPosition``, and any of the 14 CheXpert observations (as
  ``Pleural Effusion`` or ``pleural_effusion``) with values 1, 0, -1 or blank.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from radlens.core import InputError, progress
from radlens.data.images import ImageDecodeError, read_dicom_header
from radlens.data.readers._common import (
    IMAGE_CHECKS,
    Filters,
    FolderIndex,
    ImageCheck,
    ProblemLog,
    cell,
    check_image,
    label_key,
    no_images_error,
    normalize_split,
    normalize_view,
    parse_labels,
    read_csv,
    report_fields,
    require_dir,
    require_file,
    table_rows,
)
from radlens.data.schema import CHEXPERT_LABELS, ImageRecord, ReadResult, StudyRecord

IMAGE_COLUMNS = ("image", "path", "image_path", "file", "filename")
TEXT_COLUMNS = ("text", "report", "caption", "findings")
_ROLE_COLUMNS = {
    "study_id": ("study_id", "study"),
    "subject_id": ("subject_id", "patient_id", "subject", "patient"),
    "split": ("split",),
    "view": ("view", "view_position", "viewposition"),
}
_TABLE_HINT = "pass a .csv or .jsonl table with an image column (image/path) and optionally text/report"
SLICE_SUFFIXES = (".png", ".dcm", ".dicom")


def read_table(
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    views: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    require_labels: Iterable[str] | None = None,
    strict: bool = False,
    check_images: ImageCheck = "none",
) -> ReadResult:
    """Read a CSV (``.csv``, ``.csv.gz``, ``.tsv``) or JSON-lines (``.jsonl``) table of images and texts."""
    table = require_file(path, "table", _TABLE_HINT)
    if check_images not in IMAGE_CHECKS:
        raise InputError(f"unknown image check {check_images!r}", f"use {', '.join(IMAGE_CHECKS)}")
    filters = Filters.build(views, splits, require_labels)
    log = ProblemLog(strict)
    rows = _read_rows(table, log)
    columns = _columns(table, rows)
    root = require_dir(image_root, "image folder", "pass an existing folder") if image_root else table.parent
    index = FolderIndex()
    studies: dict[str, StudyRecord] = {}
    checked = found = 0
    for where, row in progress(rows, description="reading table rows"):
        record = _row_record(row, columns, root, where, log)
        if record is None:
            continue
        image = record.images[0]
        if not (filters.keep_study(record.split, record.labels) and filters.keep_image(image)):
            continue
        if columns["text"] is not None and record.report is None:
            log.add(where, "report empty")
            continue
        first = studies.get(record.study_id)
        if first is not None and (first.report, first.labels) != (record.report, record.labels):
            log.add(
                where, f"row conflicts: text or labels differ from the first row of study {record.study_id}"
            )
            continue
        if first is not None and any(i.path == image.path for i in first.images):
            log.add(where, f"row duplicate: image {image.path.name} is already in study {record.study_id}")
            continue
        checked += 1
        if not index.exists(image.path):
            log.add(image.path, "image file missing")
            continue
        found += 1
        reason = check_image(image.path, check_images)
        if reason:
            log.add(image.path, reason)
            continue
        if first is None:
            studies[record.study_id] = record
        else:
            first.images.append(image)
    if checked and not found:
        raise no_images_error(checked, root, "pass image_root: the folder the image paths are relative to")
    return ReadResult(list(studies.values()), log.problems)


def _read_rows(table: Path, log: ProblemLog) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` pairs from a CSV/TSV (pandas) or JSONL (one object per line) table."""
    name = table.name.lower()
    if name.endswith((".jsonl", ".ndjson", ".jsonl.gz")):
        return _read_jsonl(table, log)
    if not name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        raise InputError(f"{table}: unknown table type", "use a .csv, .tsv or .jsonl file")
    frame = read_csv(table, (), sep="\t" if ".tsv" in name else ",")
    return [(f"{table}:{number}", row) for number, row in enumerate(table_rows(frame), start=2)]


def _read_jsonl(table: Path, log: ProblemLog) -> list[tuple[str, dict[str, Any]]]:
    import gzip
    import zlib

    data = table.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{table} is a damaged gzip file ({exc})", "copy it again") from exc
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors write one)
    rows = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{table}:{number}"
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            log.add(where, f"row not UTF-8: invalid byte at offset {exc.start}")
            continue
        except json.JSONDecodeError as exc:
            log.add(where, f"row malformed: not a JSON object ({exc.msg})")
            continue
        if not isinstance(row, dict):
            log.add(where, "row malformed: not a JSON object")
            continue
        rows.append((where, row))
    if not rows and not log.problems:
        raise InputError(f"{table} has no rows", _TABLE_HINT)
    return rows


def _columns(table: Path, rows: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Which column plays which role (image, text, ids, split, view, labels)."""
    present: dict[str, str] = {}
    for _, row in rows:
        for key in row:
            present.setdefault(str(key).strip().lower(), str(key))
    image = next((present[c] for c in IMAGE_COLUMNS if c in present), None)
    if image is None and rows:
        raise InputError(
            f"{table} has no image column", f"name it one of {', '.join(IMAGE_COLUMNS)}; {_TABLE_HINT}"
        )
    roles: dict[str, Any] = {
        "image": image,
        "text": next((present[c] for c in TEXT_COLUMNS if c in present), None),
    }
    for role, names in _ROLE_COLUMNS.items():
        roles[role] = next((present[c] for c in names if c in present), None)
    by_key = {label_key(name): name for name in CHEXPERT_LABELS}
    roles["labels"] = {present[c]: by_key[label_key(c)] for c in present if label_key(c) in by_key}
    used = {roles[r] for r in ("image", "text", *_ROLE_COLUMNS)} | set(roles["labels"])
    roles["extra"] = [original for original in present.values() if original not in used]
    return roles


def _row_record(
    row: dict[str, Any], columns: dict[str, Any], root: Path, where: str, log: ProblemLog
) -> StudyRecord | None:
    """One row as a one-image study; ``None`` with a problem when the row is unusable."""
    image_value = cell(row.get(columns["image"]))
    if image_value is None:
        log.add(where, "row without image path")
        return None
    report = sections = None
    if columns["text"] is not None:  # an empty text is recorded by the caller, after the filters
        value = row.get(columns["text"])
        text = value if isinstance(value, str) else cell(value)
        if text and text.strip():
            report, sections = report_fields(text)
    try:
        raw: dict[str, Any] = {}
        for column, name in columns["labels"].items():  # two spellings of one label: first non-blank
            if name not in raw or cell(raw[name]) is None:
                raw[name] = row.get(column)
        labels = parse_labels(raw, list(raw))
    except ValueError as exc:
        log.add(where, f"label value invalid: {exc}")
        return None
    image_path = Path(image_value).expanduser()
    image_path = image_path if image_path.is_absolute() else root / image_path
    image = ImageRecord(image_path.stem, image_path, normalize_view(row.get(columns["view"] or "")))
    study_id = cell(row.get(columns["study_id"] or "")) or image_value
    subject_id = cell(row.get(columns["subject_id"] or "")) or study_id
    split = normalize_split(row.get(columns["split"] or ""))
    metadata = {key: value for key in columns["extra"] if (value := cell(row.get(key))) is not None}
    return StudyRecord(study_id, subject_id, [image], report, sections, labels, split, "table", metadata)


def read_slices(
    folder: str | os.PathLike[str], *, strict: bool = False, check_images: ImageCheck = "none"
) -> ReadResult:
    """Read a folder (recursively) of 2D slices, PNG or DICOM: one record per slice.

    Each subfolder is a series: ``subject_id`` and ``metadata["series"]`` are its path relative to
    ``folder`` (``"."`` for files directly in it), ``study_id`` is the slice's relative path without
    suffix. Slices are ordered by DICOM InstanceNumber when every slice of the series has one, else by
    file name (natural order: ``2.png`` before ``10.png``); ``metadata["slice_index"]`` is that order.
    DICOM headers are read (pydicom, no pixels) for the ordering; unreadable ones are problems.
    """
    base = require_dir(folder, "slice folder", "pass the folder of PNG/DICOM slices")
    if check_images not in IMAGE_CHECKS:
        raise InputError(f"unknown image check {check_images!r}", f"use {', '.join(IMAGE_CHECKS)}")
    log = ProblemLog(strict)
    series: dict[str, list[Path]] = {}
    for directory, subfolders, files in os.walk(base):
        subfolders.sort()
        chosen = [
            name for name in files if name.lower().endswith(SLICE_SUFFIXES) and not name.startswith(".")
        ]
        if chosen:
            series[Path(directory).relative_to(base).as_posix()] = [Path(directory) / n for n in chosen]
    if not series:
        raise InputError(f"no PNG or DICOM slices under {base}", "pass the folder of .png/.dcm slices")
    records: list[StudyRecord] = []
    for name, paths in progress(sorted(series.items()), description="reading slice series"):
        slices = []
        for path in sorted(paths, key=lambda p: _natural_key(p.name)):
            header = _dicom_header(path, log) if path.suffix.lower() != ".png" else {}
            if header is None:
                continue
            reason = check_image(path, check_images)
            if reason:
                log.add(path, reason)
                continue
            slices.append((path, header))
        if all("InstanceNumber" in header for _, header in slices):
            slices.sort(key=lambda item: item[1]["InstanceNumber"])
        for position, (path, header) in enumerate(slices):
            study_id = path.relative_to(base).with_suffix("").as_posix()
            metadata = {"series": name, "slice_index": position, "num_slices": len(slices), **header}
            image = ImageRecord(path.stem, path, None, {}, dict(header))
            records.append(StudyRecord(study_id, name, [image], None, None, {}, None, "slices", metadata))
    return ReadResult(records, log.problems)


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _dicom_header(path: Path, log: ProblemLog) -> dict[str, Any] | None:
    """InstanceNumber, SliceLocation, Modality, SeriesInstanceUID of a DICOM slice (header only)."""
    try:
        dataset = read_dicom_header(path)
    except ImageDecodeError as exc:
        log.add(path, f"image unreadable: {exc.reason}")
        return None
    header: dict[str, Any] = {}
    for key, convert in (("InstanceNumber", int), ("SliceLocation", float)):
        value = dataset.get(key)
        if value is not None and str(value).strip():
            with contextlib.suppress(TypeError, ValueError):
                header[key] = convert(value)
    for key in ("Modality", "SeriesInstanceUID"):
        if dataset.get(key):
            header[key] = str(dataset.get(key))
    return header

"""CheXpert-style label CSVs (CheXpert ``train.csv`` / ``valid.csv`` and tables shaped like them).

Columns: ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the 14 observations; one row per image, with
``Path`` like ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``. Rows of one
``patientNNNNN/studyN`` form one study (subject ``patientNNNNN``, study id ``patientNNNNN_studyN``);
its split comes from the folder above the patient (``train``, ``valid`` → ``validate``, ``test``).
CheXpert labels are per study (from its report) and repeated on each image row; a row whose labels
differ from its study's first row is skipped as a problem. There are no reports in CheXpert.

Paths are relative to ``image_root``; by default the folder where the first row's image exists,
trying the CSV's folder and then its parent (CheXpert's ``Path`` starts with ``CheXpert-v1.0-small/``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from radlens.core import InputError, progress
from radlens.data.readers._common import (
    IMAGE_CHECKS,
    Filters,
    FolderIndex,
    ImageCheck,
    ProblemLog,
    cell,
    check_image,
    no_images_error,
    normalize_split,
    parse_labels,
    read_csv,
    require_dir,
    require_file,
    table_rows,
)
from radlens.data.schema import CHEXPERT_LABELS, ImageRecord, ReadResult, StudyRecord

_PATH = re.compile(
    r"(?:^|/)(?:(?P<split>[^/]+)/)?(?P<patient>patient\d+)/(?P<study>study\d+)/(?P<view>[^/]+)$"
)
_HINT = "pass a CheXpert CSV (Path, Sex, Age, Frontal/Lateral, AP/PA and the 14 observation columns)"


def read_chexpert_csv(
    csv_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    views: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    require_labels: Iterable[str] | None = None,
    strict: bool = False,
    check_images: ImageCheck = "none",
) -> ReadResult:
    """Read a CheXpert-style CSV into study records (images grouped by ``patientNNNNN/studyN``).

    View positions: ``LATERAL`` for lateral rows, else the ``AP/PA`` value (``AP``, ``PA``, ...).
    """
    csv_file = require_file(csv_path, "CheXpert CSV", _HINT)
    if check_images not in IMAGE_CHECKS:
        raise InputError(f"unknown image check {check_images!r}", f"use {', '.join(IMAGE_CHECKS)}")
    filters = Filters.build(views, splits, require_labels)
    log = ProblemLog(strict)
    frame = read_csv(csv_file, ("Path", *CHEXPERT_LABELS))
    rows = table_rows(frame)
    root = _image_root(csv_file, image_root, rows)
    index = FolderIndex()
    studies: dict[str, StudyRecord] = {}
    checked = found = 0
    for number, row in enumerate(progress(rows, description="reading CheXpert rows"), start=2):
        where = f"{csv_file}:{number}"
        relative = (cell(row.get("Path")) or "").replace("\\", "/")
        match = _PATH.search(relative)
        if match is None:
            log.add(where, "row path malformed: expected .../patientNNNNN/studyN/viewN_frontal.jpg")
            continue
        try:
            labels = parse_labels(row, CHEXPERT_LABELS)
        except ValueError as exc:
            log.add(where, f"label value invalid: {exc}")
            continue
        patient, study_name = match["patient"], match["study"]
        study_id = f"{patient}_{study_name}"
        split = normalize_split(match["split"])
        image = ImageRecord(Path(match["view"]).stem, root / relative, _view(row), {}, _image_metadata(row))
        if not (filters.keep_study(split, labels) and filters.keep_image(image)):
            continue
        record = studies.get(study_id)
        if record is not None and record.labels != labels:
            log.add(where, f"labels conflict: they differ from the first row of study {study_id}")
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
        if record is None:
            metadata = {key: value for key in ("Sex", "Age") if (value := cell(row.get(key))) is not None}
            studies[study_id] = StudyRecord(
                study_id, patient, [image], None, None, labels, split, "chexpert", metadata
            )
        else:
            record.images.append(image)
    if checked and not found:
        raise no_images_error(
            checked,
            root,
            "pass image_root (Python): the folder the Path column is relative to; on the command line, "
            "keep the CSV in the folder its Path values start from, or in the one below it",
        )
    return ReadResult(list(studies.values()), log.problems)


def _image_root(
    csv_file: Path, image_root: str | os.PathLike[str] | None, rows: list[dict[str, Any]]
) -> Path:
    """The folder ``Path`` values are relative to (see the module docstring)."""
    if image_root is not None:
        return require_dir(image_root, "image folder", "pass the folder the CSV's Path column is relative to")
    first = next((cell(row.get("Path")) for row in rows if cell(row.get("Path"))), None)
    candidates = (csv_file.parent, csv_file.parent.parent)
    if first is not None:
        for candidate in candidates:
            if (candidate / first).is_file():
                return candidate
        head = first.replace("\\", "/").split("/", 1)[0]
        if head == csv_file.parent.name:
            return csv_file.parent.parent
    return csv_file.parent


def _view(row: dict[str, Any]) -> str | None:
    frontal_lateral = (cell(row.get("Frontal/Lateral")) or "").lower()
    if frontal_lateral == "lateral":
        return "LATERAL"
    ap_pa = cell(row.get("AP/PA"))
    return ap_pa.upper() if ap_pa else None


def _image_metadata(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key in ("Frontal/Lateral", "AP/PA") if (value := cell(row.get(key))) is not None}

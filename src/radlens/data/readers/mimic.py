"""MIMIC-CXR-JPG v2.0.0 / v2.1.0 (with the MIMIC-CXR report archive unzipped inside) and RadPhantom (same layout).

Layout under ``root`` (PhysioNet's ``mimic-cxr-jpg/2.0.0`` folder)::

    files/p10/p10000032/s50414267/02aa804e-....jpg        images: files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg
    files/p10/p10000032/s50414267.txt                     reports (from MIMIC-CXR's report archive)
    mimic-cxr-2.0.0-metadata.csv.gz                       dicom_id, subject_id, study_id, ViewPosition, Rows, Columns, ...
    mimic-cxr-2.0.0-split.csv.gz                          dicom_id, study_id, subject_id, split
    mimic-cxr-2.0.0-chexpert.csv.gz / -negbio.csv.gz      subject_id, study_id + 14 observations
    masks/p10/p10000032/s50414267/DICOM_ID/<slug>.png     RadPhantom only: finding and anatomy masks

Fast by construction: each CSV is read once with pandas, image and report paths are built from the
ids (no tree walk), each study folder is listed once to confirm its images exist, and report files
are read only for studies that pass the filters.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from radlens.core import InputError, progress
from radlens.data.readers._common import (
    IMAGE_CHECKS,
    Filters,
    ImageCheck,
    ProblemLog,
    bytes_problem,
    cell,
    check_image,
    decode_report,
    find_table,
    listdir,
    no_images_error,
    normalize_split,
    normalize_view,
    prefetch,
    read_bytes,
    read_csv,
    read_optional_csv,
    report_fields,
    require_dir,
    size_problem,
    slug,
)
from radlens.data.schema import CHEXPERT_LABELS, ImageRecord, LabelValue, ReadResult, StudyRecord

PREFIX = "mimic-cxr-2.0.0"
Labeler = Literal["chexpert", "negbio"]
_ID_COLUMNS = ("dicom_id", "subject_id", "study_id")
_IMAGE_COLUMNS = {"Rows": "height", "Columns": "width"}
_MASK_KEYS = {slug(name): name for name in CHEXPERT_LABELS}
_HINT = (
    "pass the folder that holds files/ and mimic-cxr-2.0.0-metadata.csv.gz "
    "(PhysioNet's mimic-cxr-jpg/2.0.0 or 2.1.0 folder)"
)

StudyKey = tuple[str, str]  # (subject_id, study_id)


def read_mimic(
    root: str | os.PathLike[str],
    *,
    views: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    require_labels: Iterable[str] | None = None,
    reports_root: str | os.PathLike[str] | None = None,
    strict: bool = False,
    labeler: Labeler | None = "chexpert",
    check_images: ImageCheck = "none",
) -> ReadResult:
    """Read a MIMIC-CXR-JPG v2.0.0 tree (or RadPhantom output) into study records.

    ``views`` keeps images of these view positions (``PA``, ``AP``, ``LATERAL``, ...), ``splits`` the
    official splits, ``require_labels`` studies positive for every listed observation. ``labeler``
    picks the label table (``"chexpert"`` or ``"negbio"``; ``None`` reads no labels).
    ``reports_root`` is where the report archive was unpacked when it is not ``root`` (the folder
    holding ``files/``, or ``files/`` itself). ``check_images`` also opens each image (see
    :data:`ImageCheck`). Bad items are skipped and listed in ``problems`` (``strict`` raises instead).
    """
    root = require_dir(root, "MIMIC-CXR-JPG folder", _HINT)
    if labeler not in (None, "chexpert", "negbio"):
        raise InputError(f"unknown labeler {labeler!r}", "use chexpert, negbio or none")
    if check_images not in IMAGE_CHECKS:
        raise InputError(f"unknown image check {check_images!r}", f"use {', '.join(IMAGE_CHECKS)}")
    log = ProblemLog(strict)
    filters = Filters.build(views, splits, require_labels)
    images_by_study = _read_index(root, filters, log)
    split_of = _read_splits(root, log, needed=filters.splits is not None)
    labels_of, bad_labels = _read_labels(root, labeler, log, needed=bool(filters.require_labels))
    reports_dir = os.fspath(_reports_dir(root, reports_root))
    masks_dir = os.fspath(root / "masks") if (root / "masks").is_dir() else None
    planned = _plan(images_by_study, split_of, labels_of, bad_labels, filters)
    ready, checked, found = _check_images(
        planned, os.fspath(root / "files"), masks_dir, reports_dir, check_images, log
    )
    if checked and not found:
        raise no_images_error(checked, root / "files", _HINT)
    records = _read_reports(ready, labeler, log, root)
    return ReadResult(records, log.problems)


class _Plan(NamedTuple):
    """A study that passed the filters: where its files are and what it keeps."""

    subject: str
    study: str
    folder: str  # pNN/pSUBJECT/sSTUDY, relative to files/ (and to masks/, reports)
    images: list[ImageRecord]
    split: str | None
    labels: dict[str, LabelValue]


def _plan(
    images_by_study: dict[StudyKey, list[ImageRecord]],
    split_of: dict[str, str | None],
    labels_of: dict[str, dict[str, LabelValue]],
    bad_labels: set[str],
    filters: Filters,
) -> list[_Plan]:
    """The studies that pass the filters, each with the images it keeps (no file is touched yet)."""
    planned = []
    for (subject, study), images in images_by_study.items():
        if study in bad_labels:  # recorded when the label table was read
            continue
        split, labels = split_of.get(study), labels_of.get(study, {})
        wanted = [image for image in images if filters.keep_image(image)]
        if wanted and filters.keep_study(split, labels):
            planned.append(_Plan(subject, study, f"{_folder(subject)}/s{study}", wanted, split, labels))
    return planned


def _check_images(
    planned: list[_Plan], files_dir: str, masks_dir: str | None, reports_dir: str, mode: str, log: ProblemLog
) -> tuple[list[tuple[_Plan, str]], int, int]:
    """Keep each study's images that exist (one folder listing per study) and pass ``mode``; attach masks.

    Returns the studies with at least one usable image, each with its report path, and how many images
    were checked and found. Listings are fetched by threads running ahead of the checks.
    """
    ready = []
    checked = found = 0
    listings = prefetch(listdir, [f"{files_dir}/{plan.folder}" for plan in planned])
    for plan, present in zip(planned, progress(listings, len(planned), "checking images"), strict=True):
        usable = []
        for image in plan.images:
            checked += 1
            if image.path.name not in present:
                log.add(image.path, "image file missing")
                continue
            found += 1
            reason = size_problem(image.metadata.get("height"), image.metadata.get("width"))
            reason = reason or check_image(image.path, mode)
            if reason:
                log.add(image.path, reason)
                continue
            if masks_dir is not None:
                image.masks = _masks(f"{masks_dir}/{plan.folder}/{image.image_id}")
            usable.append(image)
        if usable:
            ready.append((plan._replace(images=usable), f"{reports_dir}/{plan.folder}.txt"))
        else:
            log.add(f"{reports_dir}/{plan.folder}", "study skipped: none of its images is usable")
    return ready, checked, found


def _read_reports(
    ready: list[tuple[_Plan, str]], labeler: str | None, log: ProblemLog, root: Path
) -> list[StudyRecord]:
    """One record per study whose report reads; report files are read by threads running ahead of parsing.

    Raises :class:`InputError` when not one report file exists: MIMIC-CXR-JPG ships no reports, so that
    means the report archive was not unpacked where it is looked for (a setup step, not bad items).
    """
    records: list[StudyRecord] = []
    missing = 0
    texts = prefetch(read_bytes, [report_path for _, report_path in ready])
    for (plan, report_path), data in zip(ready, progress(texts, len(ready), "reading reports"), strict=True):
        missing += isinstance(data, FileNotFoundError)
        content = bytes_problem(data, report_path, log, "report file missing")
        text = None if content is None else decode_report(content, report_path, log)
        if text is None:
            continue
        report, sections = report_fields(text)
        metadata: dict[str, Any] = {"report_path": report_path, "labels_source": labeler}
        records.append(
            StudyRecord(
                plan.study,
                plan.subject,
                plan.images,
                report,
                sections,
                plan.labels,
                plan.split,
                "mimic-cxr-jpg",
                metadata,
            )
        )
    if ready and missing == len(ready):
        raise _no_reports_error(len(ready), ready[0][1], root)
    return records


def _no_reports_error(expected: int, example: str, root: Path) -> InputError:
    """The error for a read where none of the ``expected`` report files exist (``example`` is one path)."""
    return InputError(
        f"none of the {expected} report file(s) exist (e.g. {example}); MIMIC-CXR-JPG has no reports",
        f"unzip mimic-cxr-reports.zip (from MIMIC-CXR, physionet.org/content/mimic-cxr) inside {root}, "
        "so that its files/pNN/pSUBJECT/sSTUDY.txt land beside the image folders; "
        "or pass --reports-root (reports_root in Python) with the folder where it was unzipped",
    )


def _folder(subject: str) -> str:
    """``p10/p10000032``: the two-level subject folder MIMIC-CXR uses."""
    return f"p{subject[:2]}/p{subject}"


def _read_index(root: Path, filters: Filters, log: ProblemLog) -> dict[StudyKey, list[ImageRecord]]:
    """Images grouped by study from the metadata table, paths built from the ids."""
    path = find_table(root, f"{PREFIX}-metadata")
    if path is None:
        raise InputError(
            f"{root} is not a MIMIC-CXR-JPG folder: {PREFIX}-metadata.csv.gz not found", _hint(root)
        )
    if not (root / "files").is_dir():
        raise InputError(f"{root} is not a MIMIC-CXR-JPG folder: its files/ folder is missing", _HINT)
    frame = read_csv(path, _ID_COLUMNS)
    if filters.views is not None and "ViewPosition" not in frame.columns:
        raise InputError(f"{path} has no ViewPosition column", "drop the view filter")
    files = os.fspath(root / "files")
    extra = [c for c in frame.columns if c not in (*_ID_COLUMNS, "ViewPosition", *_IMAGE_COLUMNS)]
    columns = {name: frame[name].tolist() for name in frame.columns}
    views = columns.get("ViewPosition", [None] * len(frame))
    grouped: dict[StudyKey, list[ImageRecord]] = {}
    seen: set[str] = set()
    for row, (dicom, subject, study) in enumerate(zip(*(columns[c] for c in _ID_COLUMNS), strict=True)):
        dicom, subject, study = cell(dicom), cell(subject), cell(study)
        if not (dicom and subject and study and subject.isdigit() and study.isdigit()):
            log.add(path, f"index row invalid: data row {row + 1} has a blank or non-numeric id")
            continue
        if dicom in seen:
            log.add(path, f"index row duplicate: dicom_id {dicom} listed again in data row {row + 1}")
            continue
        seen.add(dicom)
        metadata = _image_metadata(columns, extra, row)
        image_path = Path(f"{files}/{_folder(subject)}/s{study}/{dicom}.jpg")  # one parse, not four joins
        image = ImageRecord(dicom, image_path, normalize_view(views[row]), {}, metadata)
        grouped.setdefault((subject, study), []).append(image)
    return grouped


def _image_metadata(columns: dict[str, list[Any]], extra: list[str], row: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for column, key in _IMAGE_COLUMNS.items():
        if column in columns:
            value = cell(columns[column][row])
            try:
                metadata[key] = int(float(value)) if value is not None else None
            except ValueError:
                metadata[key] = None
    for column in extra:
        value = cell(columns[column][row])
        if value is not None:
            metadata[column] = value
    return metadata


def _hint(root: Path) -> str:
    """The usual hint, naming a nearby folder that does hold the metadata table, if there is one.

    MIMIC-CXR (DICOM) has the same ``files/`` tree but no metadata table: the hint says so, since its
    images, view positions and official split come only with MIMIC-CXR-JPG.
    """
    if find_table(root, "cxr-record-list") is not None:
        return (
            "this looks like MIMIC-CXR (DICOM images, cxr-record-list.csv.gz); radlens reads MIMIC-CXR-JPG "
            "(same ids, with the metadata, split and label tables): pass the mimic-cxr-jpg folder, and unzip "
            "this folder's mimic-cxr-reports.zip inside it"
        )
    for pattern in (
        f"*/{PREFIX}-metadata.csv*",
        f"*/*/{PREFIX}-metadata.csv*",
        f"*/*/*/*/{PREFIX}-metadata.csv*",
    ):
        for match in root.glob(pattern):
            return f"{_HINT}; did you mean {match.parent}?"
    return _HINT


def _optional_table(
    root: Path, name: str, required: tuple[str, ...], log: ProblemLog, needed: str | None
) -> tuple[pd.DataFrame | None, Path]:
    """A table the reader can do without; raises only when a filter (``needed``) depends on it."""
    path = find_table(root, f"{PREFIX}-{name}")
    if path is None:
        expected = root / f"{PREFIX}-{name}.csv.gz"
        if needed:
            raise InputError(
                f"cannot filter by {needed}: {expected} not found", "drop the filter or add the file"
            )
        log.add(expected, f"table missing: studies get no {'split' if name == 'split' else 'labels'}")
        return None, expected
    if needed:
        return read_csv(path, required), path
    return read_optional_csv(path, required, log), path


def _read_splits(root: Path, log: ProblemLog, needed: bool) -> dict[str, str | None]:
    """study_id → official split (``train`` / ``validate`` / ``test``)."""
    frame, _ = _optional_table(root, "split", ("study_id", "split"), log, "split" if needed else None)
    if frame is None:
        return {}
    return {
        str(cell(study)): normalize_split(split)
        for study, split in zip(frame["study_id"].tolist(), frame["split"].tolist(), strict=True)
        if cell(study)
    }


def _read_labels(
    root: Path, labeler: str | None, log: ProblemLog, needed: bool
) -> tuple[dict[str, dict[str, LabelValue]], set[str]]:
    """study_id → the 14 labels (blank → ``None``), and the studies whose row has an invalid value."""
    if labeler is None:
        if needed:
            raise InputError("cannot filter by label without a label table", "choose a labeler")
        return {}, set()
    required = ("study_id", *CHEXPERT_LABELS)
    frame, path = _optional_table(root, labeler, required, log, "label" if needed else None)
    if frame is None:
        return {}, set()
    raw = frame[list(CHEXPERT_LABELS)]
    blank = raw.isna().to_numpy()
    values = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    invalid = ~blank & ~np.isin(values, (1.0, 0.0, -1.0))
    objects = values.astype(object)
    objects[np.isnan(values)] = None
    labels: dict[str, dict[str, LabelValue]] = {}
    bad: set[str] = set()
    for row, (study, row_values) in enumerate(zip(frame["study_id"].tolist(), objects.tolist(), strict=True)):
        key = cell(study)
        if key is None:
            log.add(path, f"label row invalid: data row {row + 1} has no study_id")
            continue
        if invalid[row].any():
            column = int(np.argmax(invalid[row]))
            log.add(
                path,
                f"label value invalid: study {key} has {raw.iat[row, column]!r} for "
                f"{CHEXPERT_LABELS[column]} (expected 1, 0, -1 or blank); study skipped",
            )
            bad.add(key)
            continue
        values = dict(zip(CHEXPERT_LABELS, row_values, strict=True))
        if key in labels and labels[key] != values:
            log.add(
                path,
                f"label row conflicts: study {key} listed again in data row {row + 1}; the first row is used",
            )
            continue
        labels.setdefault(key, values)
    return labels, bad


def _reports_dir(root: Path, reports_root: str | os.PathLike[str] | None) -> Path:
    """The ``files/`` folder that holds ``pNN/pSUBJECT/sSTUDY.txt`` reports."""
    if reports_root is None:
        return root / "files"
    folder = require_dir(
        reports_root, "reports folder", "pass the folder where the report archive was unpacked"
    )
    return folder / "files" if (folder / "files").is_dir() else folder


def _masks(folder: str) -> dict[str, Path]:
    """RadPhantom masks of one image: ``<slug>.png`` → observation name, ``anatomy_<part>.png`` → ``anatomy:<part>``."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return {}
    masks: dict[str, Path] = {}
    for name in names:
        stem, dot, ext = name.rpartition(".")
        if not dot or ext.lower() != "png":
            continue
        if stem.startswith("anatomy_"):
            key = "anatomy:" + stem[len("anatomy_") :]
        else:
            key = _MASK_KEYS.get(stem, stem)
        masks[key] = Path(folder, name)
    return masks

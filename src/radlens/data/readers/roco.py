"""ROCO (Radiology Objects in COntext): PubMed Central figures with their captions.

Layout (the razorx89/roco-dataset repository after ``scripts/fetch.py``)::

    data/train/radiology/captions.txt     ROCO_00002<TAB> caption       (also validation/, test/)
    data/train/radiology/dlinks*.txt      ROCO_00002<TAB>wget ... PMC4083729.tar.gz ...<TAB>image.jpg
    data/train/radiology/images/          PMC4083729_image.jpg  (fetch.py names files PMCID_image)

The CSV variant (e.g. the Kaggle copy) is also read: any ``*.csv`` in the split folder with columns
``id,name,caption``, where ``name`` is the file in ``images/``. When neither a CSV nor a dlinks file
names the images, ``images/ROCO_00002.jpg`` (or .png) is looked for. Only ``radiology/`` is read.

ROCO has no labels and no view positions. The subject id is the PMC article id when known (figures of
one article may show one patient, so splitting by subject keeps them together), else the ROCO id.

``chest_only`` keeps chest radiographs, decided from the caption (:func:`is_chest_radiograph`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

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
    read_csv,
    report_fields,
    require_dir,
)
from radlens.data.schema import ImageRecord, ReadResult, StudyRecord

_SPLIT_FOLDERS = {"train": "train", "validation": "validate", "test": "test"}
_HINT = "pass the ROCO repository (holding data/) or its data/ folder, with train/radiology/captions.txt etc."

# The chest-radiograph rule. A caption counts when it names the chest AND a projection radiograph, and
# does not name a cross-sectional or other modality (those captions describe CT/MR/US images, or
# compound figures). "CXR" alone satisfies both of the first two.
_CHEST = re.compile(
    r"\b(chest|thorax|thoracic|hemithorax|lungs?|pulmonary|pleura[l]?|mediastin\w*|cardiomegaly|"
    r"pneumothora\w*|cxr)\b",
    re.IGNORECASE,
)
_RADIOGRAPH = re.compile(
    r"\b(x-?\s?rays?|radiographs?|radiography|radiographic|roentgenograms?|plain films?|cxr)\b", re.IGNORECASE
)
_OTHER_MODALITY = re.compile(
    r"\b(ct|cect|hrct|computed tomograph\w*|tomogra\w*|mri|mr|magnetic resonance|ultraso\w*|sonograph\w*|"
    r"echocardiogra\w*|pet|angiogra\w*|fluoroscop\w*|scintigra\w*|spect)\b",
    re.IGNORECASE,
)


def is_chest_radiograph(caption: str) -> bool:
    """Whether a caption describes a chest radiograph (the documented ``chest_only`` rule)."""
    return bool(
        _CHEST.search(caption) and _RADIOGRAPH.search(caption) and not _OTHER_MODALITY.search(caption)
    )


def read_roco(
    root: str | os.PathLike[str],
    *,
    splits: Iterable[str] | None = None,
    chest_only: bool = False,
    strict: bool = False,
    check_images: ImageCheck = "none",
) -> ReadResult:
    """Read ROCO's radiology images and captions (one study per image; the caption is its report)."""
    base = _locate(require_dir(root, "ROCO folder", _HINT))
    if check_images not in IMAGE_CHECKS:
        raise InputError(f"unknown image check {check_images!r}", f"use {', '.join(IMAGE_CHECKS)}")
    filters = Filters.build(splits=splits)
    log = ProblemLog(strict)
    index = FolderIndex()
    records: list[StudyRecord] = []
    referenced = found = 0
    for folder_name, split in _SPLIT_FOLDERS.items():
        folder = base / folder_name / "radiology"
        if not folder.is_dir() or (filters.splits is not None and split not in filters.splits):
            continue
        for roco_id, caption, file_name, pmc_id, where in progress(
            _entries(folder, log), description=f"ROCO {split}"
        ):
            if not caption:
                log.add(where, "caption empty")
                continue
            if chest_only and not is_chest_radiograph(caption):
                continue
            referenced += 1
            path = _image_path(folder / "images", roco_id, file_name, index)
            if path is None:
                log.add(folder / "images" / (file_name or f"{roco_id}.jpg"), "image file missing")
                continue
            found += 1
            reason = check_image(path, check_images)
            if reason:
                log.add(path, reason)
                continue
            report, sections = report_fields(caption)
            image = ImageRecord(path.stem, path, None)
            metadata = {"report_path": where, "pmc_id": pmc_id} if pmc_id else {"report_path": where}
            records.append(
                StudyRecord(
                    roco_id, pmc_id or roco_id, [image], report, sections, {}, split, "roco", metadata
                )
            )
    if referenced and not found:
        raise no_images_error(referenced, base, "run the ROCO fetch script first, or " + _HINT)
    return ReadResult(records, log.problems)


def _locate(root: Path) -> Path:
    """The folder holding ``train/``, ``validation/``, ``test/``."""
    for base in (root / "data", root):
        if any((base / name / "radiology").is_dir() for name in _SPLIT_FOLDERS):
            return base
    raise InputError(
        f"{root} is not a ROCO folder: no data/{{train,validation,test}}/radiology/ found", _HINT
    )


Entry = tuple[str, str | None, str | None, str | None, str]  # id, caption, image file, PMC id, source


def _entries(folder: Path, log: ProblemLog) -> list[Entry]:
    """The (id, caption, image file name, PMC id, where) of one split, from its CSV or captions.txt."""
    for table in sorted(folder.glob("*.csv")):
        try:
            frame = read_csv(table, ())
        except InputError as exc:
            log.add(table, f"table unreadable: {exc.message}")
            continue
        columns = {c.lower(): c for c in frame.columns}
        if {"id", "name", "caption"} <= set(columns):
            return _csv_entries(frame, columns, table)
    captions = folder / "captions.txt"
    if not captions.is_file():
        raise InputError(f"{folder} has neither captions.txt nor a CSV with id,name,caption columns", _HINT)
    links = _dlinks(folder, log)
    entries: list[Entry] = []
    for number, line in _lines(captions, log, "caption"):
        roco_id, tab, caption = line.partition("\t")
        if not tab or not roco_id.strip():
            log.add(f"{captions}:{number}", "caption line malformed: expected ID<TAB>caption")
            continue
        file_name, pmc_id = links.get(roco_id.strip(), (None, None))
        entries.append((roco_id.strip(), caption.strip(), file_name, pmc_id, f"{captions}:{number}"))
    return entries


def _csv_entries(frame: pd.DataFrame, columns: dict[str, str], table: Path) -> list[Entry]:
    entries: list[Entry] = []
    ids, names, captions = (frame[columns[c]].tolist() for c in ("id", "name", "caption"))
    for row, (roco_id, name, caption) in enumerate(zip(ids, names, captions, strict=True)):
        file_name = cell(name)
        pmc = re.match(r"(PMC\d+)_", file_name or "")
        entries.append(
            (
                cell(roco_id) or f"row{row + 1}",
                cell(caption),
                file_name,
                pmc.group(1) if pmc else None,
                f"{table}:{row + 2}",
            )
        )
    return entries


def _lines(path: Path, log: ProblemLog, kind: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; a line that is not UTF-8 is a problem, not a crash."""
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            log.add(f"{path}:{number}", f"{kind} not UTF-8: invalid byte at offset {exc.start}")
            continue
        if line.strip():
            yield number, line


def _dlinks(folder: Path, log: ProblemLog) -> dict[str, tuple[str, str]]:
    """ROCO id → (image file name as fetch.py saves it, PMC id), from ``dlinks*.txt``."""
    links: dict[str, tuple[str, str]] = {}
    for path in sorted(folder.glob("dlinks*.txt")):
        for _, line in _lines(path, log, "download link"):
            parts = line.split("\t")
            pmc = re.search(r"(PMC\d+)\.tar\.gz", line)
            if len(parts) >= 3 and pmc:
                links.setdefault(parts[0].strip(), (f"{pmc.group(1)}_{parts[-1].strip()}", pmc.group(1)))
    return links


def _image_path(images: Path, roco_id: str, file_name: str | None, index: FolderIndex) -> Path | None:
    names = index.names(images)
    candidates = ([file_name] if file_name else []) + [f"{roco_id}{s}" for s in (".jpg", ".jpeg", ".png")]
    for name in candidates:
        if name in names:
            return images / name
    return None

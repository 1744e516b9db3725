"""IU X-ray (Indiana University chest X-ray collection, distributed by Open-i).

Layout under ``root``::

    ecgen-radiology/1.xml ...        one report per file: <AbstractText Label="FINDINGS">...,
                                     <MeSH><major>..</major><automatic>..</automatic></MeSH>,
                                     <parentImage id="CXR1_1_IM-0001-3001"> per image
    NLMCXR_png/CXR1_1_IM-0001-3001.png   images named by those ids (or images/, NLMCXR_jpg/; PNG or JPEG)

The source has no labels: the CheXpert-style labeller (:func:`radlens.data.labeler.label_report`) labels
each report. It has no view positions either, and the image-id order is not documented to mean
frontal/lateral, so ``view_position`` stays ``None``. There are no patient ids: each report is its own
subject. ``clean_text`` turns the de-identification token ``XXXX`` into the neutral ``___``.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from radlens.core import InputError, progress
from radlens.data.readers._common import (
    IMAGE_CHECKS,
    Filters,
    ImageCheck,
    ProblemLog,
    check_image,
    no_images_error,
    report_fields,
    require_dir,
)
from radlens.data.schema import ImageRecord, ReadResult, StudyRecord

#: Sections in the order they are written into the report text, as MIMIC-style headings.
_SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
_IMAGE_FOLDERS = ("NLMCXR_png", "images", "NLMCXR_jpg", "png", "jpg")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_HINT = "pass the folder that holds ecgen-radiology/ (the report XML files) and NLMCXR_png/ (the images)"


def read_iu(
    root: str | os.PathLike[str],
    *,
    images_root: str | os.PathLike[str] | None = None,
    require_labels: Iterable[str] | None = None,
    strict: bool = False,
    labeler: bool = True,
    check_images: ImageCheck = "none",
) -> ReadResult:
    """Read IU X-ray reports and images into study records (one per report XML).

    ``images_root`` is the image folder when it is not ``NLMCXR_png/`` (or ``images/``) beside the
    reports. ``labeler`` labels each report with the CheXpert-style labeller; ``require_labels`` then
    keeps studies positive for every listed observation.
    """
    reports_dir, images_dir = _locate(Path(root), images_root)
    if check_images not in IMAGE_CHECKS:
        raise InputError(f"unknown image check {check_images!r}", f"use {', '.join(IMAGE_CHECKS)}")
    if require_labels and not labeler:
        raise InputError("cannot filter by label without labelling the reports", "keep the labeler on")
    filters = Filters.build(require_labels=require_labels)
    log = ProblemLog(strict)
    images_by_id = _image_index(images_dir)
    xml_files = sorted(reports_dir.glob("*.xml"), key=_natural_key)
    if not xml_files:
        raise InputError(f"no report XML files in {reports_dir}", _HINT)
    records: list[StudyRecord] = []
    referenced = found = 0
    for xml_path in progress(xml_files, description="reading IU X-ray reports"):
        parsed = _parse_xml(xml_path, log)
        if parsed is None:
            continue
        study_id, texts, mesh, image_refs = parsed
        if not texts.get("FINDINGS") and not texts.get("IMPRESSION"):
            log.add(xml_path, "report empty: no findings or impression text")
            continue
        if not image_refs:
            log.add(xml_path, "study skipped: the report lists no images")
            continue
        images: list[ImageRecord] = []
        for image_id, caption in image_refs:
            referenced += 1
            path = images_by_id.get(image_id)
            if path is None:
                log.add(images_dir / f"{image_id}.png", "image file missing")
                continue
            found += 1
            reason = check_image(path, check_images)
            if reason:
                log.add(path, reason)
                continue
            images.append(ImageRecord(image_id, path, None, {}, {"caption": caption} if caption else {}))
        if not images:
            log.add(xml_path, "study skipped: none of its images is usable")
            continue
        composed = "\n".join(f"{name}: {texts[name]}" for name in _SECTIONS if texts.get(name))
        report, sections = report_fields(composed)
        labels = _label(sections.text() or report) if labeler else {}
        if not filters.keep_study(None, labels):
            continue
        metadata: dict[str, Any] = {"report_path": str(xml_path), **mesh}
        records.append(
            StudyRecord(study_id, study_id, images, report, sections, labels, None, "iu-xray", metadata)
        )
    if referenced and not found:
        raise no_images_error(referenced, images_dir, _HINT + " (or pass images_root)")
    return ReadResult(records, log.problems)


def _locate(root: Path, images_root: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """The report-XML folder and the image folder; InputError naming what was expected."""
    root = require_dir(root, "IU X-ray folder", _HINT)
    reports = root / "ecgen-radiology"
    if not reports.is_dir():
        if not any(root.glob("*.xml")):
            raise InputError(f"{root} is not an IU X-ray folder: ecgen-radiology/ not found", _HINT)
        reports = root  # the user passed the report folder itself
    if images_root is not None:
        return reports, require_dir(
            images_root, "IU X-ray image folder", "pass the folder of PNG/JPEG images"
        )
    for parent in dict.fromkeys((root, reports.parent)):
        for name in _IMAGE_FOLDERS:
            if (parent / name).is_dir():
                return reports, parent / name
    raise InputError(
        f"no image folder beside {reports}: expected one of {', '.join(_IMAGE_FOLDERS)}",
        "pass images_root (Python) with the folder of PNG/JPEG images; on the command line, put them in "
        "NLMCXR_png/ beside ecgen-radiology/",
    )


def _image_index(folder: Path) -> dict[str, Path]:
    """Image id (file stem) → path, from one listing of the image folder."""
    index: dict[str, Path] = {}
    for name in sorted(os.listdir(folder)):
        stem, dot, ext = name.rpartition(".")
        if dot and f".{ext.lower()}" in _IMAGE_SUFFIXES:
            index.setdefault(stem, folder / name)
    return index


def _natural_key(path: Path) -> tuple[int, str]:
    """``2.xml`` before ``10.xml``; non-numeric names after numeric ones."""
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


def _text(element: ET.Element | None) -> str:
    return re.sub(r"\s+", " ", "".join(element.itertext())).strip() if element is not None else ""


def _parse_xml(
    path: Path, log: ProblemLog
) -> tuple[str, dict[str, str], dict[str, list[str]], list[tuple[str, str]]] | None:
    """``(study id, section texts, MeSH tags, [(image id, caption)])`` of one report; ``None`` if unreadable."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        log.add(path, f"report XML malformed: {exc}")
        return None
    except OSError as exc:
        log.add(path, f"report unreadable: {exc.strerror or exc.__class__.__name__}")
        return None
    root = tree.getroot()
    uid = root.find("uId")
    study_id = (uid.get("id") if uid is not None else None) or f"CXR{path.stem}"
    texts: dict[str, str] = {}
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").strip().upper()
        if label in _SECTIONS:
            texts[label] = _text(element)
    mesh = {
        "mesh_major": [_text(e) for e in root.iterfind("MeSH/major") if _text(e)],
        "mesh_automatic": [_text(e) for e in root.iterfind("MeSH/automatic") if _text(e)],
    }
    images = []
    for element in root.iter("parentImage"):
        image_id = (element.get("id") or "").strip()
        if image_id:
            images.append((image_id, _text(element.find("caption"))))
    return study_id, texts, mesh, images


def _label(text: str) -> dict[str, float | None]:
    from radlens.data.labeler import label_report

    return dict(label_report(text))

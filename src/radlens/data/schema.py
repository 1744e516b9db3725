"""The one record type every reader produces and every later capability consumes.

A :class:`StudyRecord` is one radiology study: ids, its images (with view position and optional
masks), its report (raw text and parsed sections), CheXpert-convention labels, split and metadata.
Plain dataclasses (not pydantic) because readers build tens of thousands of them per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The 14 CheXpert observations in the column order of MIMIC-CXR's ``-chexpert.csv.gz``.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

#: CheXpert label values: 1 positive, 0 negative, -1 uncertain; ``None`` means "not mentioned" (blank).
LabelValue = float | None
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

VIEW_POSITIONS: tuple[str, ...] = (
    "PA",
    "AP",
    "LATERAL",
    "LL",
    "AP AXIAL",
    "AP LLD",
    "AP RLD",
    "PA LLD",
    "PA RLD",
    "LAO",
    "RAO",
    "LPO",
    "SWIMMERS",
    "XTABLE LATERAL",
)
SPLITS: tuple[str, ...] = ("train", "validate", "test")


def normalize_label(value: Any) -> LabelValue:
    """Map a CSV cell (float, int, str, NaN, empty) to ``1.0 / 0.0 / -1.0 / None``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    try:
        number = float(value)
    except TypeError as exc:  # e.g. a JSON list or object
        raise ValueError(f"label value {value!r} is not one of 1, 0, -1 or blank") from exc
    if math.isnan(number):
        return None
    if number not in (POSITIVE, NEGATIVE, UNCERTAIN):
        raise ValueError(f"label value {value!r} is not one of 1, 0, -1 or blank")
    return number


@dataclass(slots=True)
class ReportSections:
    """A report split into its sections; ``None`` where a section is absent.

    ``preamble`` is text before the first recognised heading (e.g. "FINAL REPORT" lines or an
    unheaded history). :meth:`text` is the documented rule for "the report" used by models.
    """

    findings: str | None = None
    impression: str | None = None
    indication: str | None = None
    comparison: str | None = None
    technique: str | None = None
    preamble: str | None = None

    def text(self) -> str:
        """Findings + impression; falling back to whichever exists, then the preamble; else ``""``."""
        parts = [part for part in (self.findings, self.impression) if part]
        if parts:
            return "\n".join(parts)
        return self.preamble or ""


@dataclass(slots=True)
class ImageRecord:
    """One image of a study. ``masks`` maps a finding (or anatomy) name to a mask PNG path."""

    image_id: str
    path: Path
    view_position: str | None = None
    masks: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StudyRecord:
    """One study: the unit of retrieval (an image set and its report)."""

    study_id: str
    subject_id: str
    images: list[ImageRecord]
    report: str | None = None
    sections: ReportSections | None = None
    labels: dict[str, LabelValue] = field(default_factory=dict)
    split: str | None = None
    source: str = "unknown"
    metadata: dict[str, Any] = field(default_factory=dict)

    def positive_labels(self) -> frozenset[str]:
        """The observations labelled 1 (uncertain and blank are not positive)."""
        return frozenset(name for name, value in self.labels.items() if value == POSITIVE)

    def report_text(self) -> str:
        """The text models use: :meth:`ReportSections.text` when parsed, else the raw report."""
        if self.sections is not None:
            text = self.sections.text()
            if text:
                return text
        return self.report or ""


@dataclass(frozen=True, slots=True)
class Problem:
    """Something a reader skipped, and why. Readers never drop an item without recording one."""

    path: str
    reason: str


@dataclass(slots=True)
class ReadResult:
    """What a reader returns: the records it could read and the problems it skipped."""

    records: list[StudyRecord]
    problems: list[Problem] = field(default_factory=list)

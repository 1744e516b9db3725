"""The data layer: one record type, readers for real dataset layouts, report parsing, labelling, loading."""

from radlens.data.schema import (
    CHEXPERT_LABELS,
    NEGATIVE,
    POSITIVE,
    SPLITS,
    UNCERTAIN,
    VIEW_POSITIONS,
    ImageRecord,
    LabelValue,
    Problem,
    ReadResult,
    ReportSections,
    StudyRecord,
    normalize_label,
)

__all__ = [
    "CHEXPERT_LABELS",
    "NEGATIVE",
    "POSITIVE",
    "SPLITS",
    "UNCERTAIN",
    "VIEW_POSITIONS",
    "ImageRecord",
    "LabelValue",
    "Problem",
    "ReadResult",
    "ReportSections",
    "StudyRecord",
    "normalize_label",
]

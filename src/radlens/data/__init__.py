"""The data layer: one record type, readers for real dataset layouts, report parsing, labelling, loading.

Readers live in :mod:`radlens.data.readers` (they pull in pandas); PyTorch datasets, transforms and the
decoded-image cache in :mod:`radlens.data.dataset`, :mod:`radlens.data.transforms` and
:mod:`radlens.data.cache` (they pull in torch). Import those by module path.
"""

from radlens.data.images import (
    MAX_PIXELS,
    MIN_SIDE,
    ImageDecodeError,
    load_image,
    probe_image,
    read_dicom_header,
)
from radlens.data.labeler import (
    identical_label_sets,
    label_report,
    label_reports,
    no_positive_in_common,
    share_positive,
)
from radlens.data.reports import DEID_TOKEN, clean_text, parse_report, report_text, split_sentences
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
    "DEID_TOKEN",
    "MAX_PIXELS",
    "MIN_SIDE",
    "NEGATIVE",
    "POSITIVE",
    "SPLITS",
    "UNCERTAIN",
    "VIEW_POSITIONS",
    "ImageDecodeError",
    "ImageRecord",
    "LabelValue",
    "Problem",
    "ReadResult",
    "ReportSections",
    "StudyRecord",
    "clean_text",
    "identical_label_sets",
    "label_report",
    "label_reports",
    "load_image",
    "no_positive_in_common",
    "normalize_label",
    "parse_report",
    "probe_image",
    "read_dicom_header",
    "report_text",
    "share_positive",
    "split_sentences",
]

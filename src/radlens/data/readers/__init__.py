"""Dataset readers: every later capability reads data through these, as :class:`ReadResult` objects.

One reader per layout (MIMIC-CXR-JPG / RadPhantom, IU X-ray, ROCO, CheXpert CSV, your own CSV/JSONL
table, a folder of slices) and :func:`read_dataset`, which picks one by name. Bad items are skipped
and listed as problems; ``strict=True`` raises at the first one (docs/data.md).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any, Literal, get_args

from radlens.core import InputError
from radlens.data.readers._common import IMAGE_CHECKS, ImageCheck, problem_kind
from radlens.data.readers.chexpert import read_chexpert_csv
from radlens.data.readers.generic import read_slices, read_table
from radlens.data.readers.iu import read_iu
from radlens.data.readers.mimic import read_mimic
from radlens.data.readers.roco import is_chest_radiograph, read_roco
from radlens.data.schema import ReadResult

DatasetFormat = Literal["mimic", "iu", "roco", "chexpert", "csv", "slices"]
FORMATS: tuple[str, ...] = get_args(DatasetFormat)

_READERS: dict[str, Callable[..., ReadResult]] = {
    "mimic": read_mimic,
    "iu": read_iu,
    "roco": read_roco,
    "chexpert": read_chexpert_csv,
    "csv": read_table,
    "slices": read_slices,
}


def reader_options(format: str) -> tuple[str, ...]:
    """The keyword options (filters etc.) the reader of ``format`` accepts."""
    parameters = inspect.signature(_reader(format)).parameters.values()
    return tuple(
        p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not p.empty
    )


def read_dataset(path: str | os.PathLike[str], format: DatasetFormat, **options: Any) -> ReadResult:
    """Read the dataset at ``path`` with the reader of ``format``; ``None`` options are left out.

    ``path`` is the dataset folder, or the CSV/JSONL file for ``chexpert`` and ``csv``. An option the
    reader does not take (e.g. ``views`` for ROCO, which has no view positions) is an InputError
    rather than being silently ignored.
    """
    reader = _reader(format)
    given = {key: value for key, value in options.items() if value is not None}
    accepted = reader_options(format)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise InputError(
            f"the {format} reader has no option {', '.join(unknown)}", f"it accepts: {', '.join(accepted)}"
        )
    return reader(path, **given)


def _reader(format: str) -> Callable[..., ReadResult]:
    if format not in _READERS:
        raise InputError(f"unknown dataset format {format!r}", f"use one of {', '.join(FORMATS)}")
    return _READERS[format]


__all__ = [
    "FORMATS",
    "IMAGE_CHECKS",
    "DatasetFormat",
    "ImageCheck",
    "is_chest_radiograph",
    "problem_kind",
    "read_chexpert_csv",
    "read_dataset",
    "read_iu",
    "read_mimic",
    "read_roco",
    "read_slices",
    "read_table",
    "reader_options",
]

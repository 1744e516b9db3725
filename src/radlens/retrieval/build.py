"""``radlens index build``: embed every study of a dataset and store it as a :class:`RetrievalIndex`.

One index row per study: the study's first frontal image (PA, AP, or unknown view — the data layer's
default, as in training) paired with its report text (:meth:`StudyRecord.report_text`). Images go
through the data layer (:class:`ImageReportDataset` with the persistent :class:`ImageCache`), resized
square to the model's ``image_size`` and left in [0, 1] (the model normalises them itself).

Nothing is dropped silently: studies the reader skipped, studies with no frontal image, no report text
or an unreadable image are written to ``problems.jsonl`` in the index folder (paths and reasons, never
report text) and counted in the returned :class:`BuildSummary`. Reports longer than the model's token
limit are counted too (the model only saw their beginning).

The folder appears atomically: the FAISS indexes, ``metadata.jsonl``, ``index.json``, ``config.yaml``,
``versions.json`` and ``problems.jsonl`` are written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from radlens.core import (
    Config,
    InputError,
    atomic_directory,
    atomic_write_text,
    prepare_output_dir,
    progress,
    write_run_metadata,
)
from radlens.data.cache import ImageCache
from radlens.data.dataset import ImageReportDataset, collate
from radlens.data.readers import DatasetFormat, read_dataset
from radlens.data.schema import Problem, StudyRecord
from radlens.retrieval._embedder import Embedder, load_embedder
from radlens.retrieval.index import IndexKind, RetrievalIndex, metadata_row

PROBLEMS_FILE = "problems.jsonl"
#: Default image cache, inside the dataset folder so index builds and training share decoded images.
CACHE_DIRNAME = ".radlens-cache"


class IndexBuildConfig(Config):
    """Options of one index build, written as ``config.yaml`` in the index folder."""

    model: str
    data: str
    format: str = "mimic"
    out: str
    kind: str = "flat"
    splits: list[str] | None = None
    batch_size: int = 64
    cache_dir: str | None = None
    num_workers: int = 0
    reports_root: str | None = None


@dataclass
class BuildSummary:
    """What :func:`build_index` did: rows indexed, what it skipped and why, reports truncated."""

    out: Path
    count: int
    model_type: str
    fingerprint: str
    kind: str
    truncated: int
    max_length: int
    problems: list[Problem] = field(default_factory=list)


def default_cache_dir(data_dir: str | os.PathLike[str]) -> Path | None:
    """``<data_dir>/.radlens-cache`` when that can be written, else ``None`` (decode every image)."""
    folder = Path(data_dir)
    if folder.is_file():  # csv/chexpert readers take a table file
        folder = folder.parent
    cache = folder / CACHE_DIRNAME
    probe = cache if cache.exists() else folder
    return cache if os.access(probe, os.W_OK | os.X_OK) else None


def build_index(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    format: DatasetFormat = "mimic",
    kind: IndexKind = "flat",
    splits: list[str] | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    num_workers: int = 0,
    device: str = "cpu",
    reports_root: str | os.PathLike[str] | None = None,
) -> BuildSummary:
    """Embed the studies of ``data_dir`` with the model in ``model_dir`` and write an index to ``out``.

    ``splits`` keeps only those official splits (all by default). ``cache_dir`` holds decoded images
    (default :func:`default_cache_dir`). ``reports_root`` (MIMIC-CXR) is where the report archive was
    unpacked when not inside ``data_dir``. Raises :class:`InputError` for a bad model, dataset or output
    folder, and when no study could be indexed.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    prepare_output_dir(out, overwrite, inputs=(model_dir, data_dir, reports_root))  # before any loading
    embedder = load_embedder(model_dir, device)
    result = read_dataset(data_dir, format, splits=splits or None, reports_root=reports_root)
    problems = list(result.problems)
    records = _with_text(result.records, problems)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir(data_dir)
    cache = ImageCache(cache_root, embedder.policy()) if cache_root is not None else None
    dataset = ImageReportDataset(
        records, embedder.policy(), channels=1, cache=cache, mean=0.0, std=1.0, on_error="skip"
    )
    problems.extend(dataset.problems)
    if not dataset.items:
        raise InputError(
            f"no study in {data_dir} can be indexed ({len(problems)} skipped)",
            "check --data and --format (and the split filter)",
        )
    if cache is not None:
        cache.build(dataset.paths(), progress=True, num_workers=num_workers)
    images, texts, rows, truncated = _embed(embedder, dataset, batch_size, num_workers, problems)
    if not rows:
        raise InputError(f"no image in {data_dir} could be read", "check the image files")
    config = IndexBuildConfig(
        model=str(model_dir),
        data=str(data_dir),
        format=format,
        out=str(out),
        kind=kind,
        splits=splits,
        batch_size=batch_size,
        cache_dir=str(cache_root) if cache_root is not None else None,
        num_workers=num_workers,
        reports_root=str(reports_root) if reports_root is not None else None,
    )
    with atomic_directory(out, overwrite) as tmp:
        # create() writes its own folder atomically; here it replaces the empty temporary folder.
        RetrievalIndex.create(
            tmp, images, texts, rows, embedder.fingerprint, embedder.model_type, kind, overwrite=True
        )
        write_run_metadata(tmp, config)
        lines = [json.dumps({"path": p.path, "reason": p.reason}) for p in problems]
        atomic_write_text(tmp / PROBLEMS_FILE, "".join(line + "\n" for line in lines))
    return BuildSummary(
        out=Path(out),
        count=len(rows),
        model_type=embedder.model_type,
        fingerprint=embedder.fingerprint,
        kind=kind,
        truncated=truncated,
        max_length=embedder.max_length,
        problems=problems,
    )


def _with_text(records: list[StudyRecord], problems: list[Problem]) -> list[StudyRecord]:
    """The records that have report text; the others are recorded as problems."""
    kept = []
    for record in records:
        if record.report_text().strip():
            kept.append(record)
        else:
            problems.append(Problem(f"study {record.study_id}", "no report text"))
    return kept


def _embed(
    embedder: Embedder,
    dataset: ImageReportDataset,
    batch_size: int,
    num_workers: int,
    problems: list[Problem],
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], int]:
    """Image and text embeddings, metadata rows and the number of truncated reports, in item order."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    images: list[torch.Tensor] = []
    texts: list[torch.Tensor] = []
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    truncated = 0
    with torch.inference_mode():
        for batch in progress(loader, total=len(loader), description="embedding studies"):
            if "image" not in batch:  # every item of the batch was unreadable
                continue
            images.append(embedder.embed_images(batch["image"], batch_size))
            text_embeds, cut = embedder.embed_texts(batch["text"], batch_size)
            texts.append(text_embeds)
            truncated += int(cut.sum())
            for index in batch["index"].tolist():
                item = dataset.items[index]
                rows.append(metadata_row(item.record, item.image))
                seen.add(index)
    for index, item in enumerate(dataset.items):
        if index not in seen:
            problems.append(Problem(str(item.image.path), "image could not be decoded"))
    if not rows:
        return np.empty((0, 0), np.float32), np.empty((0, 0), np.float32), rows, truncated
    return torch.cat(images).numpy(), torch.cat(texts).numpy(), rows, truncated

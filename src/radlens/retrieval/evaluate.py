"""``radlens eval retrieval``: cross-modal retrieval metrics of an index, and the fusion models' table.

Retrieval metrics come from the embeddings stored in the index (they are the model's: the index
records the model's fingerprint and :func:`evaluate_retrieval` checks it) for the studies of one split,
optionally a seeded random ``pool`` of them. :func:`radlens.metrics.retrieval_report` computes, for
image→text and text→image: Recall@1/5/10, median rank and MRR of the exact pair, and label-aware
precision@5/10 and mAP@10 where a result is relevant when its CheXpert positive-label set is identical
to the query's (the published work's criterion), and again when it shares a positive label.

Fusion checkpoints (one per ITM negative strategy R / NE / NI) are scored on the validation split's
studies in the index with the training code's own validation
(:func:`radlens.train.retrieval.validate_fusion`): ITM accuracy and loss on every study paired once
with its report and once with a negative report — drawn with the checkpoint's own strategy, and again
with random (R) negatives as a yardstick common to every row — and MLM accuracy and loss with BERT's
masking. Everything is seeded.

Outputs: ``results.json`` (top-level keys exactly ``image_to_text`` and ``text_to_image``),
``results.md`` (Markdown tables) beside it, ``fusion.json`` when fusion checkpoints are given
(``NAME_fusion.json`` for an output named other than ``results.json``), and ``results_config.yaml`` +
``versions.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml
from pydantic import Field

from radlens.core import Config, InputError, atomic_write_text, check_writable_folder, write_run_metadata
from radlens.data.dataset import ImageReportDataset
from radlens.data.schema import ImageRecord, StudyRecord
from radlens.data.transforms import ResizePolicy
from radlens.metrics.retrieval import retrieval_report
from radlens.retrieval._embedder import load_embedder
from radlens.retrieval.index import INFO_FILE, METADATA_FILE, RetrievalIndex, SearchFilter
from radlens.train.negatives import STRATEGIES, NegativeSampler, Strategy


class EvalRetrievalConfig(Config):
    """Options of one ``radlens eval retrieval`` run, written beside the results."""

    index: str
    model: str
    split: str | None = "test"
    pool: int | None = None
    fusion: list[str] = Field(default_factory=list)
    fusion_split: str = "validate"
    out: str
    seed: int = 0


@dataclass
class FusionRow:
    """One fusion checkpoint's validation metrics (the negative-strategy comparison table)."""

    checkpoint: str
    strategy: str
    pairs: int
    itm_accuracy: float
    itm_loss: float
    itm_accuracy_random: float
    itm_loss_random: float
    mlm_accuracy: float
    mlm_loss: float
    fallback_negatives: int


@dataclass
class RetrievalEvaluation:
    """What :func:`evaluate_retrieval` measured and wrote."""

    report: dict[str, dict[str, float]]
    count: int
    split: str | None
    fusion: list[FusionRow] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def evaluate_retrieval(
    index_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    split: str | None = "test",
    out: str | os.PathLike[str] = "results.json",
    fusion: Sequence[str | os.PathLike[str]] = (),
    pool: int | None = None,
    fusion_split: str = "validate",
    seed: int = 0,
) -> RetrievalEvaluation:
    """Evaluate the index in ``index_dir`` (built with ``model_dir``) on ``split`` (``None`` or
    ``"all"``: all rows); the fusion models on ``fusion_split`` (likewise).

    ``pool`` evaluates a seeded random subset of that many studies. ``out`` is the ``results.json``
    path; ``results.md`` (and ``fusion.json``, see :func:`fusion_path`) are written beside it.
    """
    target = Path(out)
    _check_output(target, Path(index_dir), bool(fusion))
    if pool is not None and pool < 2:
        raise InputError(f"the pool must hold at least 2 studies, got {pool}")
    index = RetrievalIndex.open(index_dir)
    embedder = load_embedder(model_dir)
    if embedder.fingerprint != index.fingerprint:
        raise InputError(
            f"index {index.folder} was built with another model than {model_dir}",
            "pass the checkpoint the index was built with, or rebuild the index",
        )
    rows = _split_rows(index, split, "evaluate")
    if pool is not None:
        if pool > len(rows):
            raise InputError(f"the pool of {pool} studies is larger than the {len(rows)} in the split")
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=pool, replace=False))
    if len(rows) < 2:
        raise InputError(f"split {split!r} holds {len(rows)} study; retrieval needs at least 2")
    images = index.images.vectors(rows)
    texts = index.texts.vectors(rows)
    labels = index.labels[rows]
    report = retrieval_report(images, texts, labels)
    for folder in fusion:  # check every fusion checkpoint before the long part
        checkpoint_strategy(folder)
    fusion_rows = [evaluate_fusion(folder, index, fusion_split, seed=seed) for folder in fusion]
    config = EvalRetrievalConfig(
        index=str(index_dir),
        model=str(model_dir),
        split=split,
        pool=pool,
        fusion=[str(folder) for folder in fusion],
        fusion_split=fusion_split,
        out=str(target),
        seed=seed,
    )
    files = _write(target, report, fusion_rows, len(rows), config)
    return RetrievalEvaluation(report, len(rows), split, fusion_rows, files)


def _split_rows(index: RetrievalIndex, split: str | None, purpose: str) -> np.ndarray:
    """Row numbers of the index rows in ``split`` (all rows for ``None`` or ``"all"``)."""
    if split is None or split.lower() == "all":
        return np.arange(len(index))
    rows = index.matching_rows(SearchFilter(splits=(split,)))
    if rows.size == 0:
        present = ", ".join(index.splits) or "no split labels"
        raise InputError(
            f"index {index.folder} has no study in split {split!r} to {purpose} (it holds {present})",
            "build the index with that split, or choose another split",
        )
    return rows


# --- fusion models ----------------------------------------------------------------------------------------


def _run_config(folder: Path) -> dict[str, Any]:
    """The ``config.yaml`` of the training run a checkpoint belongs to (its folder, or the run folder
    above a ``checkpoint-STEP/``); empty when there is none."""
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.is_file():
            try:
                document = yaml.safe_load(candidate.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                continue
            if isinstance(document, dict):
                return document
    return {}


def checkpoint_strategy(folder: str | os.PathLike[str]) -> Strategy:
    """The ITM negative strategy a fusion checkpoint was trained with: ``extra["negatives"]`` of the
    checkpoint, else ``negatives:`` in its training run's ``config.yaml``."""
    from radlens.models.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(folder)
    value = info.extra.get("negatives", _run_config(info.folder).get("negatives"))
    name = str(value).upper() if value is not None else None
    if name not in STRATEGIES:
        raise InputError(
            f"fusion checkpoint {folder} does not record its negative strategy (R, NE or NI)",
            "pass fusion checkpoints written by `radlens train retrieval --model fusion`",
        )
    return cast(Strategy, name)


def _record(row: dict[str, Any]) -> StudyRecord:
    """An index metadata row as a one-image study record (its report text as the report)."""
    if not row.get("image_path"):
        raise InputError(f"indexed study {row['study_id']} has no image path; the fusion model needs images")
    image = ImageRecord(str(row.get("image_id") or row["study_id"]), Path(row["image_path"]), row.get("view"))
    return StudyRecord(
        study_id=str(row["study_id"]),
        subject_id=str(row.get("subject_id") or ""),
        images=[image],
        report=str(row.get("report") or ""),
        labels=dict(row["labels"]),
        split=row.get("split"),
    )


def evaluate_fusion(
    folder: str | os.PathLike[str],
    index: RetrievalIndex,
    split: str = "validate",
    seed: int = 0,
    batch_size: int = 32,
) -> FusionRow:
    """ITM and MLM metrics of the fusion checkpoint ``folder`` on the ``split`` studies of ``index``.

    The numbers are :func:`radlens.train.retrieval.validate_fusion`'s — what training reports — with
    the checkpoint's own negatives and with random (R) negatives.
    """
    from radlens.models.checkpoint import load_checkpoint
    from radlens.train.retrieval import validate_fusion

    strategy = checkpoint_strategy(folder)
    model: Any = load_checkpoint(folder, expected_type="fusion")
    rows = [index.rows[number] for number in _split_rows(index, split, "score the fusion model on")]
    if len(rows) < 2:
        raise InputError(f"split {split!r} of {index.folder} holds fewer than 2 studies")
    records = [_record(row) for row in rows]
    policy = ResizePolicy(mode="square", size=int(model.config.image_size))
    dataset = ImageReportDataset(
        records, policy, channels=1, mean=0.0, std=1.0, view_filter=[row.get("view") for row in rows]
    )
    mlm = float(_run_config(Path(folder)).get("mlm_probability", 0.15))
    own = validate_fusion(model, dataset, strategy, seed, batch_size, mlm)
    rand = own if strategy == "R" else validate_fusion(model, dataset, "R", seed, batch_size, mlm)
    return FusionRow(
        checkpoint=str(folder),
        strategy=strategy,
        pairs=2 * len(dataset),
        itm_accuracy=own["itm_accuracy"],
        itm_loss=own["itm_loss"],
        itm_accuracy_random=rand["itm_accuracy"],
        itm_loss_random=rand["itm_loss"],
        mlm_accuracy=own["mlm_accuracy"],
        mlm_loss=own["mlm_loss"],
        fallback_negatives=NegativeSampler([record.labels for record in records], strategy).fallback_items,
    )


# --- output -----------------------------------------------------------------------------------------------


def fusion_path(target: Path) -> Path:
    """Where the fusion table goes for results file ``target``: ``fusion.json`` beside ``results.json``
    (the documented name), ``NAME_fusion.json`` beside any other ``NAME.json``, so it never replaces
    the results."""
    name = "fusion.json" if target.stem == "results" else f"{target.stem}_fusion.json"
    return target.with_name(name)


def _output_paths(target: Path, with_fusion: bool) -> list[Path]:
    """Every file one run writes for results file ``target`` (:func:`_write` writes exactly these)."""
    paths = [target, target.with_suffix(".md")]
    if with_fusion:
        paths.append(fusion_path(target))
    return [*paths, target.with_name(f"{target.stem}_config.yaml"), target.with_name("versions.json")]


def _check_output(target: Path, index_dir: Path, with_fusion: bool) -> None:
    """Refuse, before any work, an ``--out`` that cannot be written or whose files would replace
    each other or the index's own files."""
    if target.suffix.lower() != ".json" or target.is_dir():
        raise InputError(f"--out {target} is not a .json file path", "pass e.g. --out results.json")
    check_writable_folder(target.parent)  # the folder the files go in (or will be made in)
    paths = _output_paths(target, with_fusion)
    names = [path.name for path in paths]
    if len(set(names)) < len(names):
        clash = next(name for name in names if names.count(name) > 1)
        raise InputError(
            f"--out {target} would be overwritten by this run's {clash}", "pass e.g. --out results.json"
        )
    folder = target.parent.resolve()
    if folder == index_dir.resolve() or (
        (folder / INFO_FILE).is_file() and (folder / METADATA_FILE).is_file()
    ):
        # This run's versions.json (at least) would replace the index's own.
        raise InputError(
            f"--out {target} is inside an index folder; the results would replace the index's files",
            "write the results outside the index folder, e.g. --out results.json",
        )
    for path in paths:
        if path.is_dir():
            raise InputError(f"output path {path} is a folder", "choose another --out name or location")


def _write(
    target: Path,
    report: dict[str, dict[str, float]],
    fusion: list[FusionRow],
    count: int,
    config: EvalRetrievalConfig,
) -> list[Path]:
    files = [atomic_write_text(target, json.dumps(report, indent=2) + "\n")]
    files.append(
        atomic_write_text(
            target.with_suffix(".md"), to_markdown(report, count, config.split, fusion, config.fusion_split)
        )
    )
    if fusion:
        document = [row.__dict__ for row in fusion]
        files.append(atomic_write_text(fusion_path(target), json.dumps(document, indent=2) + "\n"))
    write_run_metadata(target.parent, config, name=f"{target.stem}_config")
    return files


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    text = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    text += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(text) + "\n"


def to_markdown(
    report: dict[str, dict[str, float]],
    count: int,
    split: str | None,
    fusion: Sequence[FusionRow] = (),
    fusion_split: str = "validate",
) -> str:
    """The results as Markdown: exact-pair table, label-aware table, and the fusion table if any."""
    where = f"the {split} split" if split else "all indexed studies"
    directions = (("image_to_text", "image → text"), ("text_to_image", "text → image"))
    exact = [
        [
            name,
            *(f"{report[key][metric]:.3f}" for metric in ("recall@1", "recall@5", "recall@10")),
            f"{report[key]['median_rank']:.1f}",
            f"{report[key]['mrr']:.3f}",
        ]
        for key, name in directions
    ]
    label_rows = []
    for key, name in directions:
        for suffix, relevance in (
            ("", "identical label set"),
            ("_share_positive", "shares a positive label"),
        ):
            values = report[key]
            label_rows.append(
                [
                    name,
                    relevance,
                    *(
                        f"{values[f'precision@{k}{suffix}']:.3f} "
                        f"({values[f'precision@{k}{suffix}_best_possible']:.3f})"
                        for k in (5, 10)
                    ),
                    f"{values[f'map@10{suffix}']:.3f}",
                ]
            )
    parts = [
        f"# Retrieval results\n\n{count} studies from {where}.\n",
        "## Exact pair\n",
        _table(["direction", "R@1", "R@5", "R@10", "median rank", "MRR"], exact),
        "## Label-aware\n",
        "Precision in brackets: the best any ranking could score in this pool (label sets with fewer "
        "than k studies cannot fill k places).\n",
        _table(
            ["direction", "relevant when", "P@5 (best possible)", "P@10 (best possible)", "mAP@10"],
            label_rows,
        ),
    ]
    if fusion:
        lines = [
            [
                row.strategy,
                f"{row.mlm_accuracy:.3f}",
                f"{row.mlm_loss:.3f}",
                f"{row.itm_accuracy:.3f}",
                f"{row.itm_loss:.3f}",
                f"{row.itm_accuracy_random:.3f}",
                f"{row.itm_loss_random:.3f}",
                str(row.pairs),
                Path(row.checkpoint).name,
            ]
            for row in fusion
        ]
        header = [
            "negatives",
            "MLM acc",
            "MLM loss",
            "ITM acc",
            "ITM loss",
            "ITM acc (R)",
            "ITM loss (R)",
            "pairs",
            "checkpoint",
        ]
        parts += [
            f"## Fusion models ({'all studies' if fusion_split.lower() == 'all' else fusion_split + ' split'})"
            "\n\nITM on 50% matching / 50% non-matching pairs, negatives "
            "from the model's own strategy and, in (R), random negatives for every model.\n",
            _table(header, lines),
        ]
    return "\n".join(parts)

"""Training the CheXpert classifier with the generic loop, and scoring it per label.

A run is described by :class:`ClassifierRunConfig` (data, model, optimisation), built from a preset
(:data:`PRESETS`, per tower) and then the user's overrides. Images are read as grey [0, 1] pixels
(the model normalises them itself) from the ``split`` of a MIMIC-CXR-JPG / RadPhantom folder; the
study's first frontal image is used. When training ends the model is scored on ``eval_split``
(per-label AUROC and accuracy at 0.5 over the labels that are known: 1 positive, 0 negative) and
``eval.json`` is written beside the checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from pydantic import ValidationError
from torch.utils.data import DataLoader

from radlens.core import Config, InputError, atomic_write_text, prepare_output_dir
from radlens.data.dataset import ImageReportDataset, collate
from radlens.data.schema import Problem, StudyRecord
from radlens.data.transforms import ResizePolicy
from radlens.models.classifier import Arch, CheXpertClassifier, ClassifierConfig
from radlens.train.loop import TrainConfig, Trainer, TrainResult

EVAL_NAME = "eval.json"

#: Preset → tower → partial run config. ``cpu-demo`` trains on RadPhantom at 128 px in a few minutes on
#: 2 idle cores (EfficientNet fine-tunes only its last 6 stages). ``paper`` follows the CheXpert paper
#: (Irvin et al. 2019: Adam, lr 1e-4, batch 16, 320 px, 3 epochs ≈ 42,000 steps on CheXpert's 224k
#: images), with EfficientNet-Lite0 or the VGG in place of DenseNet-121.
_PAPER_TRAIN = {
    "max_steps": 42_000,
    "batch_size": 16,
    "lr": 1e-4,
    "weight_decay": 0.0,
    "warmup_steps": 500,
    "log_every": 50,
    "checkpoint_every": 2000,
    "num_workers": 4,
}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu-demo": {
        "efficientnet": {
            "model": {"image_size": 128, "trainable_stages": 6},
            "train": {"max_steps": 300, "batch_size": 16, "lr": 1e-3, "warmup_steps": 20, "log_every": 10},
        },
        "vgg": {
            "model": {"image_size": 128, "vgg_widths": [16, 32, 64, 128], "vgg_convs_per_stage": 1},
            "train": {"max_steps": 400, "batch_size": 16, "lr": 2e-3, "warmup_steps": 20, "log_every": 10},
        },
    },
    "paper": {
        "efficientnet": {"model": {"image_size": 320}, "train": _PAPER_TRAIN},
        "vgg": {"model": {"image_size": 320}, "train": _PAPER_TRAIN},
    },
}


class ClassifierRunConfig(Config):
    """One classifier training run: where the data is, the model, the optimisation."""

    data: str
    split: str = "train"
    eval_split: str = "test"
    preset: str = "cpu-demo"
    model: ClassifierConfig = ClassifierConfig()
    train: TrainConfig = TrainConfig()


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def build_run_config(
    data: str | Path,
    preset: str = "cpu-demo",
    arch: Arch = "efficientnet",
    overrides: Mapping[str, Any] | None = None,
) -> ClassifierRunConfig:
    """The preset for ``arch``, then ``overrides`` (nested: ``{"train": {"max_steps": 50}}``)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}", f"use one of: {', '.join(PRESETS)}")
    if arch not in PRESETS[preset]:
        raise InputError(f"unknown architecture {arch!r}", "use efficientnet or vgg")
    document = _merge({"data": str(data), "preset": preset, "model": {"arch": arch}}, PRESETS[preset][arch])
    document = _merge(document, overrides or {})
    try:
        return ClassifierRunConfig.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InputError(
            f"invalid classifier option {where}: {first['msg']}", "fix the value or see --help"
        ) from exc


def _dataset(records: Sequence[StudyRecord], size: int) -> ImageReportDataset:
    """Grey [0, 1] pixels (mean 0, std 1: the model normalises), first frontal image per study."""
    return ImageReportDataset(records, ResizePolicy(size=size), channels=1, mean=0.0, std=1.0)


def _records(data: str, split: str) -> tuple[list[StudyRecord], list[Problem]]:
    from radlens.data.readers.mimic import read_mimic

    result = read_mimic(data, splits=None if split == "all" else [split])
    return result.records, list(result.problems)


@torch.no_grad()
def evaluate_classifier(
    model: CheXpertClassifier, records: Sequence[StudyRecord], batch_size: int = 32
) -> dict[str, Any]:
    """Per-label AUROC and accuracy at 0.5 over the studies whose label is 1 or 0 (NaN-free labels).

    Labels with only one class among the known values get no AUROC (``None``). ``mean_auroc`` averages
    the labels that have one.
    """
    from sklearn.metrics import roc_auc_score

    dataset = _dataset(records, model.config.image_size)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    probabilities, labels = [], []
    for batch in loader:
        probabilities.append(model.predict_proba(batch["image"]))
        labels.append(model.select_labels(batch["labels"]))
    if not probabilities:
        return {"studies": 0, "labels": {}, "mean_auroc": None}
    scores, truth = torch.cat(probabilities), torch.cat(labels)
    per_label: dict[str, dict[str, Any]] = {}
    for column, name in enumerate(model.labels):
        known = (truth[:, column] == 0) | (truth[:, column] == 1)
        y, p = truth[known, column].numpy(), scores[known, column].numpy()
        both = 0 < y.sum() < len(y)
        per_label[name] = {
            "known": int(known.sum()),
            "positive": int(y.sum()),
            "auroc": float(roc_auc_score(y, p)) if both else None,
            "accuracy": float(((p >= 0.5) == (y == 1)).mean()) if len(y) else None,
        }
    aurocs = [v["auroc"] for v in per_label.values() if v["auroc"] is not None]
    mean = float(sum(aurocs) / len(aurocs)) if aurocs else None
    return {"studies": len(dataset), "labels": per_label, "mean_auroc": mean}


@dataclass
class ClassifierTrainResult:
    """The training run and the evaluation written to ``eval.json``."""

    train: TrainResult
    evaluation: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)


def train_classifier(
    run: ClassifierRunConfig, out: str | Path, resume: bool = False, overwrite: bool = False
) -> ClassifierTrainResult:
    """Train, write the final checkpoint to ``out`` (loadable with ``load_checkpoint``), then score it.

    With ``overwrite`` an old run in ``out`` is deleted only once the training split has been read.
    """
    out = Path(out)
    if not resume:
        prepare_output_dir(out, overwrite, inputs=(run.data,))  # checks only: fail before reading anything
    records, problems = _records(run.data, run.split)
    if not records:
        raise InputError(
            f"no studies in split {run.split!r} of {run.data}", "pass another --split or dataset"
        )
    dataset = _dataset(records, run.model.image_size)
    problems += dataset.problems
    if len(dataset) < run.train.batch_size:
        raise InputError(
            f"{len(dataset)} usable studies in split {run.split!r}, fewer than one batch of "
            f"{run.train.batch_size}",
            "lower --batch-size or pass another --split or dataset",
        )
    if not resume and overwrite and out.exists():
        shutil.rmtree(out)  # --overwrite: the old run goes (only once the inputs are known to be good)
    set_seed(run.train.seed)  # the initial weights follow train.seed
    model = CheXpertClassifier(run.model)
    trainer = Trainer(
        model, dataset, run.train, out, collate_fn=collate, run_config=run, description="classifier"
    )
    result = trainer.fit(resume=resume)
    evaluation: dict[str, Any] = {"split": run.eval_split}
    try:
        eval_records, eval_problems = _records(run.data, run.eval_split)
    except InputError:
        eval_records, eval_problems = [], []
    problems += eval_problems
    evaluation |= evaluate_classifier(model.eval(), eval_records) if eval_records else {"studies": 0}
    document = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in evaluation.items()}
    atomic_write_text(out / EVAL_NAME, json.dumps(document, indent=2) + "\n")
    return ClassifierTrainResult(result, evaluation, problems)

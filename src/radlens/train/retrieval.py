"""``radlens train retrieval``: data, model and validation wiring around the generic loop.

- ``dual``: a CLIP-style :class:`~radlens.models.dual_encoder.DualEncoder` trained with InfoNCE
  (identical report texts in a batch count as one pair). Validation: InfoNCE loss and Recall@5 both ways.
- ``fusion``: a ViLT-style :class:`~radlens.models.fusion.FusionModel` trained with ITM (half of each
  batch paired with a negative report, :mod:`radlens.train.negatives`) + MLM on the matched pairs.
  With ``--base DUAL_CKPT`` it fuses on top of that trained dual encoder (align before fuse, see
  :func:`~radlens.models.fusion.aligned_fusion_config`); its similarity term is calibrated on training
  pairs before the first step. Validation: ITM and MLM accuracy and losses.
- ``metric``: the metric-learning stage (:mod:`radlens.train.metric`) on a trained ``--base`` model.
  Validation: label-aware precision@5 before and after the projection.

Studies come from the dataset's official split: ``train`` to train, ``validate`` to validate. Images are
resized once into an :class:`~radlens.data.cache.ImageCache` (``cache_dir``, default ``OUT/image-cache``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env, set_seed
from pydantic import Field, ValidationError, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from radlens.core import (
    Config,
    InputError,
    atomic_write_text,
    check_writable_folder,
    is_quiet,
    prepare_output_dir,
    progress,
    read_config_file,
)
from radlens.data.cache import ImageCache
from radlens.data.dataset import ImageReportDataset, collate, label_set_codes, label_tensor
from radlens.data.readers import DatasetFormat, read_dataset
from radlens.data.schema import Problem, StudyRecord
from radlens.data.transforms import ResizePolicy, train_augmentation
from radlens.metrics.retrieval import retrieval_report
from radlens.models import eval_mode
from radlens.models.checkpoint import (
    load_checkpoint,
    model_fingerprint,
    read_checkpoint_info,
    upgrade_legacy_config,
)
from radlens.models.dual_encoder import DualEncoder, DualEncoderConfig, contrastive_loss
from radlens.models.fusion import (
    IGNORE_INDEX,
    FusionConfig,
    FusionImageFeatures,
    FusionModel,
    aligned_fusion_config,
    itm_loss,
    mask_tokens,
    mlm_loss,
)
from radlens.models.text_towers import Tokenizer
from radlens.train.frozen import (
    FrozenFeatureDualEncoder,
    FusionFeatureDataset,
    aligned_text_table,
    collate_features,
    precompute_fusion_features,
)
from radlens.train.loop import TrainConfig, Trainer, TrainResult
from radlens.train.metric import (
    EmbeddingDataset,
    MetricLearner,
    MetricProjection,
    MetricProjectionConfig,
    MetricStageConfig,
    base_embeddings,
    label_precision_at_k,
    label_set_ids,
    source_of,
)
from radlens.train.negatives import NegativeSampler, Strategy
from radlens.train.presets import PresetName, deep_merge, preset_values
from radlens.train.state import config_difference, saved_run_config

ModelKind = Literal["dual", "fusion", "metric"]
VALIDATION_NAME = "validation.json"
_SECTIONS = {"dual": "dual_encoder", "fusion": "fusion", "metric": "metric"}


class RetrievalRunConfig(Config):
    """Everything a ``radlens train retrieval`` run resolved (written to ``config.yaml``).

    Only the section of the chosen ``model`` is set. ``precompute_frozen`` trains on frozen features
    computed once (:mod:`radlens.train.frozen`): a dual encoder's frozen stages, or the frozen dual
    encoder a fusion model fuses on (``base``); it excludes ``augment``. ``mlm_probability``
    is the fusion model's masking rate, the share of report tokens it learns to predict (0 trains ITM
    only; at most 1). ``negatives`` picks the ITM negatives (fusion only). ``base`` is
    the checkpoint a run builds on: the dual encoder a fusion model fuses on (optional), the model
    whose embeddings the metric stage projects (required).
    """

    data: str
    format: DatasetFormat = "mimic"
    reports_root: str | None = None
    model: ModelKind = "dual"
    preset: PresetName = "cpu-demo"
    negatives: Strategy = "R"
    base: str | None = None
    cache_dir: str | None = None
    precompute_frozen: bool = False
    augment: bool = False
    mlm_probability: float = Field(0.15, ge=0.0, le=1.0)
    train: TrainConfig = TrainConfig()
    dual_encoder: DualEncoderConfig | None = None
    fusion: FusionConfig | None = None
    metric: MetricStageConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        for kind, section in _SECTIONS.items():
            if kind != self.model and getattr(self, section) is not None:
                raise ValueError(f"the {section} section applies to --model {kind} only")
        if getattr(self, _SECTIONS[self.model]) is None:
            raise ValueError(
                f"--model {self.model} needs a {_SECTIONS[self.model]} section (presets give one)"
            )
        if self.model == "metric" and not self.base:
            raise ValueError("--model metric needs --base, a trained dual or fusion checkpoint")
        if self.base and self.model == "dual":
            raise ValueError("--base applies to --model fusion (a dual encoder to fuse on) and metric only")
        if self.negatives != "R" and self.model != "fusion":
            raise ValueError("--negatives applies to --model fusion only (ITM negatives)")
        if self.precompute_frozen and (self.model == "metric" or self.augment):
            raise ValueError("precompute_frozen needs --model dual or fusion, and augment: false")
        if self.precompute_frozen and self.model == "fusion" and not self.base:
            raise ValueError(
                "precompute_frozen with --model fusion needs --base DUAL_CKPT (the frozen dual encoder whose "
                "outputs are computed once); pass --base, or set precompute_frozen: false in --config"
            )
        return self


@dataclass
class RetrievalSummary:
    """What a run did, for the command's summary (no report text)."""

    config: RetrievalRunConfig
    result: TrainResult
    validation: dict[str, Any]
    train_studies: int
    validate_studies: int
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- config -------------------------------------------------------------------------------------------


def resolve_config(
    options: Mapping[str, Any], config_path: str | os.PathLike[str] | None, out: Path, resume: bool
) -> RetrievalRunConfig:
    """Preset (or, with ``resume``, the interrupted run's config), then the YAML file, then ``options``.

    ``options`` holds the command-line values the user gave (``None`` = not given); ``max_steps`` goes
    to the ``train`` section.
    """
    given = {key: value for key, value in options.items() if value is not None and key != "max_steps"}
    if options.get("max_steps") is not None:
        given["train"] = {"max_steps": options["max_steps"]}
    from_file = read_config_file(config_path) if config_path is not None else {}
    if resume:
        saved = saved_run_config(out)
        if saved is None:
            raise InputError(f"no checkpoint to resume in {out}", "start without --resume (or check --out)")
        # A run from before an option existed continues as it was made (radlens 0.1: ImageNet statistics)
        base: dict[str, Any] = _upgrade_legacy_sections(saved)
    else:
        layered = deep_merge(from_file, given)
        model, preset = layered.get("model", "dual"), layered.get("preset", "cpu-demo")
        base = {"model": model, "preset": preset, **preset_values(str(preset), str(model))}
    merged = deep_merge(deep_merge(base, from_file), given)
    if "data" not in merged:
        raise InputError("--data is required", "pass the dataset folder, e.g. --data phantom/")
    try:
        config = RetrievalRunConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "value_error" and not first["loc"]:  # a combination of options: say just that
            message = str(first.get("ctx", {}).get("error", first["msg"]))
            raise InputError(message, "see 'radlens train retrieval --help'") from exc
        raise InputError(*_invalid(exc)) from exc
    if resume:
        difference = config_difference(base, config.model_dump(mode="json"))
        if difference is not None:
            raise InputError(
                f"cannot resume with a different config ({difference})",
                "resume with the options of the interrupted run, or start a new run",
            )
    return config


def _upgrade_legacy_sections(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the model-config fields an older radlens did not write filled with the value their
    absence means (:func:`radlens.models.checkpoint.upgrade_legacy_config`)."""
    upgraded = dict(saved)
    for section, config_class in (("dual_encoder", DualEncoderConfig), ("fusion", FusionConfig)):
        if isinstance(upgraded.get(section), dict):
            upgraded[section] = upgrade_legacy_config(config_class, upgraded[section])
    return upgraded


def _invalid(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"invalid option {where}: {first['msg']}", "fix the value in --config or on the command line"


# --- data ---------------------------------------------------------------------------------------------


def _read_splits(config: RetrievalRunConfig) -> tuple[list[StudyRecord], list[StudyRecord], list[Problem]]:
    path = Path(config.data)
    if not path.exists():
        raise InputError(f"dataset {path} not found", "pass the dataset folder with --data")
    result = read_dataset(path, config.format, reports_root=config.reports_root)
    train = [record for record in result.records if record.split == "train"]
    validate = [record for record in result.records if record.split == "validate"]
    if not train:
        raise InputError(
            f"no training studies in {path} ({len(result.records)} studies, none in the 'train' split)",
            "use a dataset with an official split (e.g. RadPhantom or MIMIC-CXR-JPG)",
        )
    return train, validate, list(result.problems)


def _cache_dir(config: RetrievalRunConfig, out: Path) -> Path:
    """The image cache folder (``cache_dir``, default ``OUT/image-cache``); InputError when it, or the
    nearest existing folder above it, is a file (checked before anything is written or deleted)."""
    if not config.cache_dir:
        return out / "image-cache"
    folder = Path(config.cache_dir)
    try:
        check_writable_folder(folder)
    except InputError as exc:
        raise InputError(f"--cache-dir {folder}: {exc.message}", "pass a folder for the image cache") from exc
    return folder


def _datasets(
    config: RetrievalRunConfig,
    out: Path,
    image_size: int,
    train: list[StudyRecord],
    validate: list[StudyRecord],
) -> tuple[ImageReportDataset, ImageReportDataset, list[Problem]]:
    """Train and validate datasets (pixels in [0, 1], grey) over cached resized images."""
    policy = ResizePolicy(size=image_size)
    cache = ImageCache(_cache_dir(config, out), policy)
    seed = config.train.seed
    augment = train_augmentation(seed=seed) if config.augment else None
    options: dict[str, Any] = {"channels": 1, "cache": cache, "mean": 0.0, "std": 1.0, "seed": seed}
    train_set = ImageReportDataset(train, policy, augment=augment, **options)
    val_set = ImageReportDataset(validate, policy, **options)
    problems = [*train_set.problems, *val_set.problems]
    bad = {
        problem.path
        for problem in cache.build([*train_set.paths(), *val_set.paths()], progress=not is_quiet())
    }
    problems += [Problem(path, "image could not be decoded") for path in sorted(bad)]
    if bad:  # rebuild without the studies whose image failed (recorded above)
        keep = [
            [item.record for item in ds.items if os.path.abspath(item.image.path) not in bad]
            for ds in (train_set, val_set)
        ]
        train_set = ImageReportDataset(keep[0], policy, augment=augment, **options)
        val_set = ImageReportDataset(keep[1], policy, **options)
    if len(train_set) == 0:
        raise InputError("no usable training studies (no frontal image could be read)", "check the dataset")
    return train_set, val_set, problems


def _texts(dataset: ImageReportDataset, indices: Sequence[int]) -> list[str]:
    return [dataset.items[index].record.report_text() for index in indices]


def truncation_note(tokenizer: Tokenizer, dataset: ImageReportDataset, max_length: int) -> str | None:
    """How many training reports are longer than ``max_length`` tokens (the model sees only the start)."""
    texts = _texts(dataset, range(len(dataset)))
    cut = sum(
        int(tokenizer.encode(texts[s : s + 256], max_length)["truncated"].sum())
        for s in range(0, len(texts), 256)
    )
    if not cut:
        return None
    return f"{cut} of {len(texts)} training reports are longer than {max_length} tokens and were cut"


# --- dual encoder -------------------------------------------------------------------------------------


class DualCollator:
    """Items → ``pixel_values``, tokens, ``group_ids`` (identical report texts share a group) and
    ``label_codes`` (the studies' positive-label sets, for label-aware targets)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        batch = collate(items)
        encoded = self.tokenizer.encode(batch["text"], self.max_length)
        groups: dict[str, int] = {}
        group_ids = torch.tensor([groups.setdefault(text, len(groups)) for text in batch["text"]])
        return {
            "pixel_values": batch["image"],
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "group_ids": group_ids,
            "label_codes": label_set_codes(batch["labels"]),
        }


def _train_dual(
    config: RetrievalRunConfig, out: Path, resume: bool, train_set: ImageReportDataset, notes: list[str]
) -> tuple[TrainResult, DualEncoder]:
    assert config.dual_encoder is not None
    set_seed(config.train.seed)
    model = DualEncoder(config.dual_encoder)
    notes.extend(filter(None, [truncation_note(model.tokenizer, train_set, config.dual_encoder.max_length)]))
    if config.precompute_frozen:
        wrapper = FrozenFeatureDualEncoder(model)
        features = wrapper.precompute(train_set, config.train.batch_size, config.train.num_workers)
        notes.append(f"trained on frozen features of {len(features)} studies computed once")
        trainer = Trainer(
            wrapper, features, config.train, out, collate_fn=collate_features, run_config=config,
            save_model=model, description="dual encoder",
        )  # fmt: skip
    else:
        collator = DualCollator(model.tokenizer, config.dual_encoder.max_length)
        trainer = Trainer(
            model,
            train_set,
            config.train,
            out,
            collate_fn=collator,
            run_config=config,
            description="dual encoder",
        )
    return trainer.fit(resume), model


@torch.no_grad()
def validate_dual(model: DualEncoder, dataset: ImageReportDataset, batch_size: int) -> dict[str, Any]:
    """InfoNCE loss (batches of ``batch_size``) and Recall@5 / precision@5 both ways on ``dataset``."""
    images, texts, labels = base_embeddings(model, dataset, batch_size)
    assert texts is not None
    scale = float(model.scale())
    losses = [
        float(contrastive_loss(scale * images[s : s + batch_size] @ texts[s : s + batch_size].t()))
        for s in range(0, len(images), batch_size)
        if len(images[s : s + batch_size]) > 1
    ]
    report = retrieval_report(images.numpy(), texts.numpy(), labels.numpy(), ks=(1, 5, 10))
    return {
        "studies": len(images),
        "infonce_loss": float(np.mean(losses)) if losses else None,
        "recall@5_image_to_text": report["image_to_text"]["recall@5"],
        "recall@5_text_to_image": report["text_to_image"]["recall@5"],
        "precision@5_image_to_text": report["image_to_text"]["precision@5"],
        "chance_recall@5": min(1.0, 5 / len(images)),
    }


# --- fusion -------------------------------------------------------------------------------------------


class ITMPairs(Dataset[dict[str, Any] | None]):
    """Study items (``dataset``'s, with an ``index``) with a negative report drawn for each from
    ``texts`` (the studies' reports, same order), seeded by ``(seed, epoch, index)``."""

    def __init__(
        self, dataset: Dataset[Any], texts: Sequence[str], sampler: NegativeSampler, seed: int
    ) -> None:
        self.dataset, self.texts, self.sampler, self.seed, self.epoch = dataset, texts, sampler, seed, 0

    def __len__(self) -> int:
        return len(self.texts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.dataset[index]
        if item is None:
            return None
        other, fell_back = self.sampler.sample(index, np.random.default_rng([self.seed, self.epoch, index]))
        item["negative_index"] = other
        item["negative_text"] = self.texts[other]
        item["negative_fallback"] = fell_back
        return item


class ITMCollator:
    """Pairs → ITM batch: the first ``ceil(B/2)`` items keep their report (label 1), the rest get their
    negative (label 0), so a batch is exactly balanced; items arrive shuffled, so who gets a negative
    is random. Images come as ``pixel_values`` or, from a
    :class:`~radlens.train.frozen.FusionFeatureDataset`, as ``image_cells``; ``text_index`` is the study
    whose report each row holds."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        kept = [item for item in items if item is not None]
        positives = len(kept) - len(kept) // 2
        texts = [item["text"] if row < positives else item["negative_text"] for row, item in enumerate(kept)]
        encoded = self.tokenizer.encode(texts, self.max_length)
        negatives = kept[positives:]
        if "image" in kept[0]:
            images = {"pixel_values": torch.stack([item["image"] for item in kept])}
        else:
            images = {"image_cells": torch.stack([item["image_cells"] for item in kept])}
        return {
            **images,
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "itm_labels": (torch.arange(len(kept)) < positives).long(),
            "text_index": torch.tensor(
                [
                    item["index"] if row < positives else item["negative_index"]
                    for row, item in enumerate(kept)
                ]
            ),
            "fallback_rate": torch.tensor(
                sum(item["negative_fallback"] for item in negatives) / max(1, len(negatives))
            ),
        }


class FusionITM(nn.Module):
    """``loss(batch)`` = ITM cross-entropy on all pairs + MLM on the matched pairs (masked 80/10/10).

    The image features are computed once for both passes, and the MLM head scores only the masked
    positions. With ``precomputed`` (an aligned model's :class:`~radlens.train.frozen.FusionFeatureDataset`)
    batches carry ``image_cells`` and the aligner's text embeddings are looked up by ``text_index``:
    a step then runs only the fusion transformer.
    """

    aligned_texts: torch.Tensor | None

    def __init__(
        self, model: FusionModel, mlm_probability: float, precomputed: FusionFeatureDataset | None = None
    ) -> None:
        super().__init__()
        self.model, self.mlm_probability = model, mlm_probability
        self.grid = precomputed.grid if precomputed is not None else None
        aligned = precomputed.aligned_texts if precomputed is not None else None
        self.register_buffer("aligned_texts", aligned, persistent=False)  # moves with the model

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model, labels = self.model, batch["itm_labels"]
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if "image_cells" in batch:
            assert self.grid is not None and self.aligned_texts is not None, "image_cells need precomputed"
            image = FusionImageFeatures(batch["image_cells"], self.grid)
            aligned_text = self.aligned_texts[batch["text_index"].to(self.aligned_texts.device)]
        else:
            image, aligned_text = model.image_features(batch["pixel_values"]), None
        out = model.fuse(ids, mask, image, aligned_text, output_attentions=False, compute_mlm=False)
        assert out.itm_logits is not None
        itm = itm_loss(out.itm_logits, labels)
        matched = labels == 1
        masked, targets = mask_tokens(ids[matched], model.tokenizer, self.mlm_probability)
        chosen = targets != IGNORE_INDEX
        mlm_out = model.fuse(
            masked, mask[matched], image.rows(matched), output_attentions=False, compute_itm=False,
            mlm_positions=chosen,
        )  # fmt: skip
        assert mlm_out.mlm_logits is not None
        mlm = mlm_loss(mlm_out.mlm_logits, targets[chosen])
        accuracy = (out.itm_logits.argmax(dim=-1) == labels).float().mean()
        return {
            "loss": itm + mlm,
            "itm_loss": itm.detach(),
            "mlm_loss": mlm.detach(),
            "itm_accuracy": accuracy,
            "negative_fallback_rate": batch["fallback_rate"].float(),
        }


def _train_fusion(
    config: RetrievalRunConfig,
    model_config: FusionConfig,
    aligner: DualEncoder | None,
    out: Path,
    resume: bool,
    train_set: ImageReportDataset,
    notes: list[str],
) -> tuple[TrainResult, FusionModel]:
    sampler = NegativeSampler([item.record.labels for item in train_set.items], config.negatives)
    if config.negatives != "R":
        notes.append(
            f"negatives {config.negatives}: {sampler.fallback_items} of {len(sampler)} training studies have "
            "no valid negative and use a random one (R)"
        )
    if aligner is None:
        notes.append(
            "no --base: a fusion transformer trained from scratch needs far more pairs than a CPU run sees "
            "to learn image-text matching; fuse on a trained dual encoder with --base (docs/retrieval.md)"
        )
    set_seed(config.train.seed)
    model = FusionModel(model_config)
    texts = _texts(train_set, range(len(train_set)))
    precomputed: FusionFeatureDataset | None = None
    if aligner is not None:
        model.load_aligner(aligner)
        if config.precompute_frozen:
            batch, workers = config.train.batch_size, config.train.num_workers
            precomputed = precompute_fusion_features(model, train_set, texts, batch, workers)
            notes.append(f"trained on the aligner's outputs for {len(precomputed)} studies computed once")
        if not resume:  # a resumed run restores the calibrated scalars from its checkpoint
            positive, negative = _aligned_similarities(
                model, train_set, texts, sampler, config.train.seed, config.train.batch_size, precomputed
            )
            model.calibrate_alignment(positive, negative)
    notes.extend(filter(None, [truncation_note(model.tokenizer, train_set, model_config.max_text_length)]))
    trainer = Trainer(
        FusionITM(model, config.mlm_probability, precomputed),
        ITMPairs(precomputed if precomputed is not None else train_set, texts, sampler, config.train.seed),
        config.train,
        out,
        collate_fn=ITMCollator(model.tokenizer, model_config.max_text_length),
        run_config=config,
        save_model=model,
        checkpoint_extra={"negatives": config.negatives},
        description="fusion model",
    )
    return trainer.fit(resume), model


CALIBRATION_STUDIES = 512


@torch.no_grad()
def _aligned_similarities(
    model: FusionModel,
    dataset: ImageReportDataset,
    texts: Sequence[str],
    sampler: NegativeSampler,
    seed: int,
    batch_size: int,
    precomputed: FusionFeatureDataset | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The aligner's cosines of up to :data:`CALIBRATION_STUDIES` training studies with their own
    report and with a negative one (the run's strategy), for :meth:`FusionModel.calibrate_alignment`."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(dataset), size=min(CALIBRATION_STUDIES, len(dataset)), replace=False))
    negatives = [sampler.sample(int(i), np.random.default_rng([seed, int(i)]))[0] for i in chosen]
    if precomputed is not None:
        image = FusionImageFeatures(precomputed.cells[chosen], precomputed.grid)
        own, other = precomputed.aligned_texts[chosen], precomputed.aligned_texts[negatives]
    else:
        subset = torch.utils.data.Subset(dataset, chosen.tolist())
        features = precompute_fusion_features(model, subset, [texts[i] for i in chosen], batch_size)
        image = FusionImageFeatures(features.cells, features.grid)
        own, other = (
            features.aligned_texts,
            aligned_text_table(model, [texts[i] for i in negatives], batch_size),
        )
    images = F.normalize(image.pooled(), dim=-1)  # the aligner's image embeddings
    return (images * own).sum(dim=-1), (images * other).sum(dim=-1)


@torch.no_grad()
def validate_fusion(
    model: FusionModel,
    dataset: ImageReportDataset,
    strategy: Strategy,
    seed: int,
    batch_size: int,
    mlm_probability: float,
) -> dict[str, Any]:
    """ITM accuracy/loss on every study paired with its report and with a negative (balanced), and MLM
    accuracy/loss on the matched pairs (fixed masking seed).

    Runs on the model's device, in eval mode (restored afterwards); the image side is computed once per
    batch with :meth:`FusionModel.embed_image_features` (in chunks on a CPU)."""
    sampler = NegativeSampler([item.record.labels for item in dataset.items], strategy)
    generator = torch.Generator().manual_seed(seed)
    itm_correct = itm_total = mlm_correct = mlm_total = 0
    itm_losses, mlm_losses = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    device = model.device
    with eval_mode(model):
        for batch in progress(loader, description=f"validating the fusion model ({strategy} negatives)"):
            indices = batch["index"].tolist()
            negatives = [sampler.sample(i, np.random.default_rng([seed, 0, i]))[0] for i in indices]
            texts = list(batch["text"]) + _texts(dataset, negatives)
            labels = torch.cat([torch.ones(len(indices)), torch.zeros(len(indices))]).long().to(device)
            encoded = model.tokenize(texts)
            ids, attention = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
            # The image pass runs once, for the positive, negative and MLM passes.
            image = model.embed_image_features(batch["image"], batch_size)
            n = len(indices)
            out = model.fuse(
                ids,
                attention,
                image.rows(torch.arange(n).repeat(2)),
                output_attentions=False,
                compute_mlm=False,
            )
            assert out.itm_logits is not None
            itm_losses.append(float(itm_loss(out.itm_logits, labels)) * len(labels))
            itm_correct += int((out.itm_logits.argmax(dim=-1) == labels).sum())
            itm_total += len(labels)
            masked, targets = mask_tokens(
                encoded["input_ids"][:n], model.tokenizer, mlm_probability, generator
            )
            chosen = targets != IGNORE_INDEX
            if chosen.any():
                mlm_out = model.fuse(
                    masked.to(device), attention[:n], image, output_attentions=False, compute_itm=False,
                    mlm_positions=chosen.to(device),
                )  # fmt: skip
                assert mlm_out.mlm_logits is not None
                chosen_targets = targets[chosen].to(device)
                mlm_losses.append(float(mlm_loss(mlm_out.mlm_logits, chosen_targets)) * int(chosen.sum()))
                mlm_correct += int((mlm_out.mlm_logits.argmax(dim=-1) == chosen_targets).sum())
                mlm_total += int(chosen.sum())
    return {
        "studies": len(dataset),
        "itm_accuracy": itm_correct / itm_total,
        "itm_loss": sum(itm_losses) / itm_total,
        "mlm_accuracy": mlm_correct / mlm_total if mlm_total else None,
        "mlm_loss": sum(mlm_losses) / mlm_total if mlm_total else None,
        "negatives": strategy,
    }


# --- metric stage -------------------------------------------------------------------------------------


def _load_base(config: RetrievalRunConfig) -> tuple[nn.Module, int]:
    assert config.base is not None
    info = read_checkpoint_info(config.base)
    if info.model_type not in ("dual_encoder", "fusion"):
        raise InputError(
            f"--base {config.base} holds a {info.model_type} model",
            "pass a dual encoder or fusion checkpoint",
        )
    model = load_checkpoint(config.base)
    image_size = int(info.config["image_size"])
    return model, image_size


def _train_metric(
    config: RetrievalRunConfig,
    out: Path,
    resume: bool,
    base: nn.Module,
    train_set: ImageReportDataset,
    notes: list[str],
) -> tuple[TrainResult, MetricProjection]:
    """Train the projection on the training studies whose label set is known (unlabelled ones are left
    out: their classes would be unknown, not the empty label set)."""
    assert config.metric is not None
    images, texts, labels = base_embeddings(base, train_set, config.train.batch_size)
    classes = label_set_ids(labels.numpy())
    known = classes >= 0
    if not bool(known.all()):
        left_out = int((~known).sum())
        notes.append(
            f"{left_out} of {len(classes)} training studies have no CheXpert labels and were left out of "
            "the metric stage"
        )
        images, classes = images[known], classes[known]
        texts = texts[known] if texts is not None else None
    if not len(classes):
        raise _no_labels_error()
    embeddings = images if texts is None else torch.cat([images, texts])
    targets = classes if texts is None else torch.cat([classes, classes])
    projection_config = MetricProjectionConfig(
        in_dim=embeddings.shape[1],
        out_dim=config.metric.out_dim,
        hidden_dim=config.metric.hidden_dim,
        source=source_of(base),
        base_model_type=str(getattr(base, "model_type", "")),
        base_fingerprint=model_fingerprint(base),
    )
    set_seed(config.train.seed)
    projection = MetricProjection(projection_config)
    trainer = Trainer(
        MetricLearner(projection, config.metric),
        EmbeddingDataset(embeddings, targets),
        config.train,
        out,
        run_config=config,
        save_model=projection,
        checkpoint_extra={"base": os.path.abspath(config.base or "")},
        description="metric projection",
    )
    return trainer.fit(resume), projection


def _no_labels_error() -> InputError:
    return InputError(
        "no training study has CheXpert labels: the metric stage groups studies by label set",
        "use a dataset with labels (MIMIC-CXR-JPG label tables, RadPhantom, IU X-ray with the labeller)",
    )


@torch.no_grad()
def validate_metric(
    base: nn.Module, projection: MetricProjection, dataset: ImageReportDataset, batch_size: int
) -> dict[str, Any]:
    """Label-aware precision@5 of the base embeddings and of their projection on ``dataset``."""
    projection.eval()
    images, texts, labels = base_embeddings(base, dataset, batch_size)
    if texts is None:  # fusion [CLS]: study-to-study retrieval, the study itself left out
        classes = label_set_ids(labels.numpy())
        images, classes = images[classes >= 0], classes[classes >= 0]  # unlabelled: unknown class
        return {
            "studies": len(images),
            "precision@5_before": label_precision_at_k(images, classes, 5),
            "precision@5_after": label_precision_at_k(projection(images), classes, 5),
        }
    before = retrieval_report(images.numpy(), texts.numpy(), labels.numpy(), ks=(1, 5))
    after = retrieval_report(projection(images).numpy(), projection(texts).numpy(), labels.numpy(), ks=(1, 5))
    return {
        "studies": len(images),
        "precision@5_before": before["image_to_text"]["precision@5"],
        "precision@5_after": after["image_to_text"]["precision@5"],
        "recall@5_before": before["image_to_text"]["recall@5"],
        "recall@5_after": after["image_to_text"]["recall@5"],
    }


# --- entry point --------------------------------------------------------------------------------------


def train_retrieval(
    config: RetrievalRunConfig, out: str | os.PathLike[str], resume: bool = False, overwrite: bool = False
) -> RetrievalSummary:
    """Train ``config.model`` on the train split of ``config.data`` into ``out``, then validate."""
    out = Path(out)
    # Under accelerate launch / torchrun every process runs this; the first alone checks --out (and,
    # with --overwrite, empties it) and the others write nothing before it has (a second check would
    # find the first one's writes and refuse the folder).
    processes = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator reads it
    if not resume and processes.is_main_process:
        prepare_output_dir(out, overwrite, inputs=(config.data, config.base, config.reports_root))
    _cache_dir(config, out)  # a cache path that cannot be a folder fails before any work or deletion
    base, image_size = _load_base(config) if config.base else (None, 0)
    fusion_config = config.fusion
    if config.model == "dual":
        assert config.dual_encoder is not None
        image_size = config.dual_encoder.image_size
    elif config.model == "fusion":
        assert fusion_config is not None
        if base is not None:
            if not isinstance(base, DualEncoder):
                raise InputError(
                    f"--base {config.base} is not a dual encoder", "fuse on a trained --model dual checkpoint"
                )
            fusion_config = aligned_fusion_config(fusion_config, base.config)
        image_size = fusion_config.image_size
    train, validate, problems = _read_splits(config)
    if config.model == "metric" and all(torch.isnan(label_tensor(record)).all() for record in train):
        raise _no_labels_error()
    if len(train) < config.train.batch_size:
        raise InputError(
            f"{len(train)} training studies, fewer than one batch of {config.train.batch_size}",
            "lower train.batch_size in --config or use more data",
        )
    if not resume and overwrite and out.exists() and processes.is_main_process:
        shutil.rmtree(out)  # --overwrite: the old run goes (only once the inputs are known to be good)
    processes.wait_for_everyone()
    train_set, val_set, data_problems = _datasets(config, out, image_size, train, validate)
    problems += data_problems
    notes: list[str] = []
    batch = config.train.batch_size
    validation: dict[str, Any]
    if config.model == "dual":
        result, dual = _train_dual(config, out, resume, train_set, notes)
        validation = validate_dual(dual, val_set, batch) if len(val_set) > 1 else {}
    elif config.model == "fusion":
        assert fusion_config is not None
        aligner = base if isinstance(base, DualEncoder) else None
        result, fusion = _train_fusion(config, fusion_config, aligner, out, resume, train_set, notes)
        if len(val_set) > 1:
            seed = config.train.seed
            validation = validate_fusion(
                fusion, val_set, config.negatives, seed, batch, config.mlm_probability
            )
        else:
            validation = {}
    else:
        assert base is not None
        result, projection = _train_metric(config, out, resume, base, train_set, notes)
        validation = validate_metric(base, projection, val_set, batch) if len(val_set) > 1 else {}
    if not validation:
        notes.append(f"no validation: the validate split has {len(val_set)} usable studies (2 needed)")
    if processes.is_main_process:
        atomic_write_text(out / VALIDATION_NAME, json.dumps(validation, indent=2) + "\n")
    return RetrievalSummary(config, result, validation, len(train_set), len(val_set), problems, notes)

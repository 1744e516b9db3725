"""Train on precomputed outputs of a model's frozen part (CPU training).

Dual encoder: when all but the last stages of both towers are frozen (``trainable_image_stages`` /
``trainable_text_stages``) and images are not augmented, the frozen stages compute the same features for
a study at every step: they are run once (:meth:`FrozenFeatureDualEncoder.precompute`) and training only
runs the trainable stages — about 4× faster for EfficientNet-Lite0 + MiniLM with one trainable stage
each. Frozen stages stay in eval mode in the full model too (no dropout, fixed BatchNorm statistics), so
the loss is the full model's loss (``tests/train/test_retrieval.py`` checks it). The parameters are the
dual encoder's own: checkpoints save the :class:`~radlens.models.dual_encoder.DualEncoder` unchanged.

Supported towers: the CNN image towers (``efficientnet_lite0``, ``small_cnn``: a plain sequence of
stages) and both BERT text towers with at least their embeddings frozen.

Fusion model on a frozen dual encoder (``--base``): the aligner's image cells and its text embedding
of every report are fixed, so :func:`precompute_fusion_features` computes them once and a training
step runs only the fusion transformer (:class:`~radlens.train.retrieval.FusionITM` takes either).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from radlens.core import InputError, progress
from radlens.data.dataset import ImageReportDataset, collate, label_set_codes
from radlens.models import eval_mode
from radlens.models.dual_encoder import DualEncoder
from radlens.models.fusion import FusionModel
from radlens.models.image_towers import EfficientNetLite0Tower, SmallCNNTower, inference_chunk_size
from radlens.models.text_towers import mean_pool


def _frozen_count(stages: Sequence[nn.Module], trainable: int | None) -> int:
    return 0 if trainable is None else max(0, len(stages) - trainable)


def _extended_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BERT's additive B×1×1×L mask: 0 for tokens, the dtype's minimum for padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _run_layers(
    layers: Iterable[nn.Module], states: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    mask = _extended_mask(attention_mask, states.dtype)
    for layer in layers:
        out = layer(states, mask)
        states = out[0] if isinstance(out, tuple) else out  # transformers 4 returns tuples, 5 tensors
    return states


class FrozenFeatureDualEncoder(nn.Module):
    """``loss(batch)`` of a :class:`DualEncoder` from precomputed frozen features (see the module doc)."""

    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        if not supports_precompute(model):
            raise InputError(
                "precompute_frozen needs a CNN image tower and a text tower with frozen embeddings",
                "set trainable_text_stages and use efficientnet_lite0 or small_cnn, or precompute_frozen: false",
            )
        self.model = model
        image_stages = model.image_tower.stages()
        text_stages = model.text_tower.stages()
        self.image_frozen = _frozen_count(image_stages, model.config.trainable_image_stages)
        self.text_frozen = _frozen_count(text_stages, model.config.trainable_text_stages)

    # --- precomputation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def frozen_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Output of the frozen image stages (the normalised pixels when none is frozen)."""
        tower = self.model.image_tower
        x = tower.normalize(pixel_values.to(self.model.device))
        for stage in tower.stages()[: self.image_frozen]:
            x = stage(x)
        return x

    @torch.no_grad()
    def frozen_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states after the frozen text stages (embeddings, then the frozen layers)."""
        bert = self.model.text_tower.bert
        input_ids, attention_mask = input_ids.to(self.model.device), attention_mask.to(self.model.device)
        states = bert.embeddings(input_ids=input_ids)
        return _run_layers(bert.encoder.layer[: self.text_frozen - 1], states, attention_mask)

    def precompute(
        self, dataset: ImageReportDataset, batch_size: int = 32, num_workers: int = 0
    ) -> FeatureDataset:
        """Frozen features of every item of ``dataset`` (pixels in [0, 1]).

        Frozen stages are always in eval mode (the towers' ``freeze``), whatever the model's mode.
        """
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers
        )
        images: list[torch.Tensor] = []
        texts: list[torch.Tensor] = []
        text_of: dict[str, int] = {}
        groups: list[int] = []
        codes: list[int] = []
        total = (len(dataset) + batch_size - 1) // batch_size
        chunk = inference_chunk_size(self.model.device, batch_size)
        for batch in progress(loader, total=total, description="frozen features"):
            for pixels in batch["image"].split(chunk):
                images.extend(self.frozen_image(pixels).cpu())
            encoded = self.model.tokenize(batch["text"])
            states = self.frozen_text(encoded["input_ids"], encoded["attention_mask"]).cpu()
            lengths = encoded["attention_mask"].sum(dim=1).tolist()
            texts.extend(state[:length].clone() for state, length in zip(states, lengths, strict=True))
            # Identical report texts share a group, so the loss does not push them apart.
            groups.extend(text_of.setdefault(text, len(text_of)) for text in batch["text"])
            codes.extend(label_set_codes(batch["labels"]).tolist())
        return FeatureDataset(images, texts, groups, codes)

    # --- training ---------------------------------------------------------------------------------------

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The dual encoder's contrastive loss, running only the trainable stages."""
        model = self.model
        x = batch["image_features"]
        for stage in model.image_tower.stages()[self.image_frozen :]:
            x = stage(x)
        image_embeds = F.normalize(model.image_projection(x.mean(dim=(2, 3))), dim=-1)
        layers = model.text_tower.bert.encoder.layer[self.text_frozen - 1 :]
        states = _run_layers(layers, batch["text_states"], batch["attention_mask"])
        text_embeds = F.normalize(model.text_projection(mean_pool(states, batch["attention_mask"])), dim=-1)
        logits = model.scale() * image_embeds @ text_embeds.t()
        return model.contrastive_loss(logits, batch.get("group_ids"), batch.get("label_codes"))


def supports_precompute(model: DualEncoder) -> bool:
    """Whether :class:`FrozenFeatureDualEncoder` can train ``model`` (see the module doc)."""
    text_frozen = _frozen_count(model.text_tower.stages(), model.config.trainable_text_stages)
    return isinstance(model.image_tower, EfficientNetLite0Tower | SmallCNNTower) and text_frozen >= 1


class FeatureDataset(Dataset[dict[str, Any]]):
    """Precomputed frozen features: image feature maps, per-study token states, report groups and
    label-set codes (:func:`~radlens.data.dataset.label_set_codes`)."""

    def __init__(
        self, images: list[torch.Tensor], texts: list[torch.Tensor], groups: list[int], label_codes: list[int]
    ) -> None:
        self.images, self.texts, self.groups, self.label_codes = images, texts, groups, label_codes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image_features": self.images[index],
            "text_states": self.texts[index],
            "group": self.groups[index],
            "label_code": self.label_codes[index],
        }


def collate_features(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack image features; pad token states (zeros; masked out) to the batch's longest report."""
    texts = [item["text_states"] for item in items]
    length = max(len(text) for text in texts)
    states = torch.zeros(len(texts), length, texts[0].shape[1], dtype=texts[0].dtype)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for row, text in enumerate(texts):
        states[row, : len(text)] = text
        mask[row, : len(text)] = 1
    return {
        "image_features": torch.stack([item["image_features"] for item in items]),
        "text_states": states,
        "attention_mask": mask,
        "group_ids": torch.tensor([item["group"] for item in items]),
        "label_codes": torch.tensor([item["label_code"] for item in items]),
    }


# --- fusion model on a frozen dual encoder ----------------------------------------------------------------


class FusionFeatureDataset(Dataset[dict[str, Any]]):
    """An aligned fusion model's precomputed inputs per study: the image cells (S×N×E, the
    :class:`~radlens.models.fusion.FusionImageFeatures` of each image, on a ``grid``), the aligner's
    unit-norm embedding of each report (S×E, row = study) and the report texts."""

    def __init__(
        self, cells: torch.Tensor, grid: tuple[int, int], aligned_texts: torch.Tensor, texts: list[str]
    ) -> None:
        if not len(cells) == len(aligned_texts) == len(texts):
            raise ValueError("cells, aligned_texts and texts must have one row per study")
        self.cells, self.grid, self.aligned_texts, self.texts = cells, grid, aligned_texts, texts

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "image_cells": self.cells[index], "text": self.texts[index]}


def supports_fusion_precompute(model: FusionModel) -> bool:
    """Whether :func:`precompute_fusion_features` applies: the model fuses on a frozen dual encoder."""
    return model.config.aligner is not None


@torch.no_grad()
def aligned_text_table(model: FusionModel, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """The aligner's unit-norm embeddings of ``texts`` (len(texts)×E, on the CPU)."""
    if model.config.aligner is None:
        raise InputError("this fusion model has no aligner", "train it with --base DUAL_CKPT")
    rows: list[torch.Tensor] = []
    with eval_mode(model):
        for start in progress(range(0, len(texts), batch_size), description="aligner text embeddings"):
            encoded = model.tokenize(texts[start : start + batch_size])
            ids = encoded["input_ids"].to(model.device)
            mask = encoded["attention_mask"].to(model.device)
            rows.append(model.aligned_text_embeds(ids, mask).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, model.config.aligner.embed_dim)


@torch.no_grad()
def precompute_fusion_features(
    model: FusionModel,
    dataset: Dataset[Any],
    texts: Sequence[str],
    batch_size: int = 32,
    num_workers: int = 0,
) -> FusionFeatureDataset:
    """:class:`FusionFeatureDataset` of an aligned ``model`` over ``dataset`` (items with an ``image`` in
    [0, 1], as :class:`~radlens.data.dataset.ImageReportDataset` gives) whose reports are ``texts``."""
    if not supports_fusion_precompute(model):
        raise InputError(
            "only a fusion model built on a dual encoder (--base) has a frozen part to precompute",
            "pass --base DUAL_CKPT, or set precompute_frozen: false",
        )
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers
    )
    cells: list[torch.Tensor] = []
    grid = (0, 0)
    for batch in progress(loader, description="aligner image features"):
        features = model.embed_image_features(batch["image"], batch_size)
        cells.append(features.cells.cpu())
        grid = features.grid
    aligned_texts = aligned_text_table(model, texts, batch_size)
    return FusionFeatureDataset(torch.cat(cells), grid, aligned_texts, list(texts))

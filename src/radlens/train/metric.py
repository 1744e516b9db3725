"""The metric-learning stage: a projection of FROZEN embeddings trained so that studies with the same
CheXpert label set land close together (pytorch-metric-learning losses and miners).

Classes are label sets: two studies are in the same class when their positive labels (value 1) are
identical. A study whose labels are all blank has an unknown label set (class -1, as in
:func:`radlens.data.dataset.label_set_codes`), not the empty one: it is left out of the stage. The base
model is never updated: its embeddings — a dual encoder's image and text embeddings (one shared
projection for both, keeping the two modalities in one space) or a fusion model's pooled
[CLS] of each study's own (image, report) pair — are computed once and the projection is trained on
them through the generic loop. The result is a :class:`MetricProjection` checkpoint whose config names
the base model's type and fingerprint, so it is never applied to embeddings of another model.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from pytorch_metric_learning import losses, miners
from torch import nn
from torch.utils.data import DataLoader, Dataset

from radlens.core import Config
from radlens.data.dataset import ImageReportDataset, collate, label_set_codes
from radlens.models import eval_mode
from radlens.models.checkpoint import register_model
from radlens.models.dual_encoder import DualEncoder
from radlens.models.fusion import FusionModel

Source = Literal["dual_encoder", "fusion_cls", "features"]


class MetricStageConfig(Config):
    """Projection size and the pytorch-metric-learning loss and miner of the metric stage.

    ``hidden_dim`` ``None`` gives a linear projection (orthogonally initialised, so it starts as a
    rotation of the base space); otherwise a two-layer MLP. Losses and miners use the library's defaults.
    """

    out_dim: int = Field(128, ge=2)
    hidden_dim: int | None = Field(None, ge=2)
    loss: Literal["multi_similarity", "triplet", "contrastive"] = "multi_similarity"
    miner: Literal["multi_similarity", "triplet", "none"] = "multi_similarity"


class MetricProjectionConfig(Config):
    """A :class:`MetricProjection`: sizes and which base model's embeddings it applies to."""

    in_dim: int = Field(..., ge=1)
    out_dim: int = Field(128, ge=2)
    hidden_dim: int | None = Field(None, ge=2)
    source: Source = "features"
    base_model_type: str = ""
    base_fingerprint: str = ""


@register_model("metric_projection")
class MetricProjection(nn.Module):
    """Frozen-embedding → L2-normalised metric embedding."""

    config_class = MetricProjectionConfig

    def __init__(self, config: MetricProjectionConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        if config.hidden_dim is None:
            linear = nn.Linear(config.in_dim, config.out_dim, bias=False)
            nn.init.orthogonal_(linear.weight)
            self.net: nn.Module = linear
        else:
            self.net = nn.Sequential(
                nn.Linear(config.in_dim, config.hidden_dim),
                nn.ReLU(),
                nn.Linear(config.hidden_dim, config.out_dim),
            )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(embeddings), dim=-1)


class MetricLearner(nn.Module):
    """Training wrapper: ``loss(batch)`` with ``embedding`` (B×D) and ``label`` (B label-set ids)."""

    def __init__(self, projection: MetricProjection, stage: MetricStageConfig) -> None:
        super().__init__()
        self.projection = projection
        loss_classes = {
            "multi_similarity": losses.MultiSimilarityLoss,
            "triplet": losses.TripletMarginLoss,
            "contrastive": losses.ContrastiveLoss,
        }
        miner_classes = {
            "multi_similarity": miners.MultiSimilarityMiner,
            "triplet": miners.TripletMarginMiner,
        }
        self.loss_fn = loss_classes[stage.loss]()
        self.miner = miner_classes[stage.miner]() if stage.miner != "none" else None

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeddings = self.projection(batch["embedding"])
        labels = batch["label"]
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return {"loss": self.loss_fn(embeddings, labels, indices)}


class EmbeddingDataset(Dataset[dict[str, torch.Tensor]]):
    """Rows of a frozen-embedding matrix with their label-set ids."""

    def __init__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if len(embeddings) != len(labels):
            raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
        self.embeddings, self.labels = embeddings.float(), labels.long()

    def __len__(self) -> int:
        return len(self.embeddings)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"embedding": self.embeddings[index], "label": self.labels[index]}


def label_set_ids(label_rows: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Class id per study: its positive-label bitmask (rows of 14 CheXpert values, 1 = positive, NaN =
    blank), or -1 for a study whose labels are all blank (unknown label set, see ``label_set_codes``)."""
    rows = torch.as_tensor(np.asarray(label_rows, dtype=np.float64))
    return label_set_codes(rows)


def label_precision_at_k(embeddings: torch.Tensor, classes: torch.Tensor, k: int = 5) -> float:
    """Mean fraction of each item's ``k`` nearest others (cosine, itself excluded) with its label set;
    items whose label set no other item has, or is unknown (class < 0), are left out as queries (as
    neighbours they never match)."""
    if len(embeddings) < 2:
        return float("nan")
    unit = F.normalize(embeddings.float(), dim=-1)
    scores = unit @ unit.t()
    scores.fill_diagonal_(-float("inf"))
    top = scores.topk(min(k, len(unit) - 1), dim=1).indices
    same = (classes[top] == classes[:, None]).float()
    has_match = ((classes[None, :] == classes[:, None]).sum(dim=1) > 1) & (classes >= 0)
    return float((same.sum(dim=1) / top.shape[1])[has_match].mean()) if has_match.any() else float("nan")


@torch.no_grad()
def base_embeddings(
    model: nn.Module, dataset: ImageReportDataset, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Frozen embeddings of every study of ``dataset``: ``(image or fusion CLS, text or None, labels)``.

    ``dataset`` must give pixels in [0, 1] (mean 0, std 1): the models normalise their own input.
    """
    if not isinstance(model, DualEncoder | FusionModel):
        raise TypeError(f"no frozen embeddings for {type(model).__name__}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    images, texts, labels = [], [], []
    with eval_mode(model), torch.no_grad():
        for batch in loader:
            labels.append(batch["labels"])
            if isinstance(model, DualEncoder):
                images.append(model.embed_images(batch["image"], batch_size))
                texts.append(model.embed_texts(batch["text"], batch_size)[0])
            else:
                images.append(fusion_cls(model, batch["image"], batch["text"]))
    return torch.cat(images), (torch.cat(texts) if texts else None), torch.cat(labels)


def fusion_cls(model: FusionModel, pixel_values: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """The fusion model's pooled [CLS] (the ITM head's input) for each (image, text) pair."""
    encoded = model.tokenize(texts)
    device = model.device
    out = model(
        encoded["input_ids"].to(device),
        encoded["attention_mask"].to(device),
        pixel_values.to(device),
        output_attentions=False,
        compute_mlm=False,
    )
    pooler: Any = model.vilt.pooler
    return pooler(out.last_hidden_state).cpu()


def source_of(model: nn.Module) -> Source:
    """Which embeddings of ``model`` the metric stage projects."""
    return "dual_encoder" if isinstance(model, DualEncoder) else "fusion_cls"

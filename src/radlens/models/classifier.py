"""A multi-label CheXpert classifier: an image tower plus one linear head for the 14 observations.

Two towers: EfficientNet-Lite0 (ImageNet-initialised, the default) or the small VGG of
:mod:`radlens.models.vgg` (from scratch; the architecture LRP was designed on). The model takes pixels
in [0, 1] (B×1×H×W grey or B×3×H×W) and normalises them itself, so a checkpoint never depends on how
the caller normalised; it returns one logit per label (apply a sigmoid, not a softmax).

Training uses :func:`masked_bce`: binary cross-entropy over the labels that are known. CheXpert labels
are 1 / 0 / -1 (uncertain) / blank (not mentioned, NaN in :func:`radlens.data.dataset.label_tensor`).
Blanks are ignored by default (``blank="negative"`` counts them as 0), and uncertain labels follow
the CheXpert paper's policies: ``ignore`` (U-Ignore, the default), ``positive`` (U-Ones) or
``negative`` (U-Zeros).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from radlens.core import Config, InputError
from radlens.data.schema import CHEXPERT_LABELS
from radlens.models.checkpoint import register_model
from radlens.models.image_towers import EfficientNetLite0Tower, ImageNormalization, ImageTowerConfig
from radlens.models.vgg import VGGClassifier, VGGConfig

Arch = Literal["efficientnet", "vgg"]
UncertainPolicy = Literal["ignore", "positive", "negative"]
BlankPolicy = Literal["ignore", "negative"]


class ClassifierConfig(Config):
    """Tower, labels and loss policy of a :class:`CheXpertClassifier`.

    ``pretrained`` (EfficientNet only; default true there, must stay unset/false for the VGG) starts the
    tower from ImageNet weights. ``trainable_stages`` freezes all but the last k tower stages
    (EfficientNet; ``None`` trains everything). ``labels`` are the outputs, a subset of the 14 CheXpert
    observations in any order. ``uncertain`` / ``blank`` decide what -1 and blank labels mean in the loss.
    """

    arch: Arch = "efficientnet"
    pretrained: bool | None = None
    image_size: int = Field(224, ge=16, le=2048)
    labels: tuple[str, ...] = CHEXPERT_LABELS
    uncertain: UncertainPolicy = "ignore"
    blank: BlankPolicy = "ignore"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    trainable_stages: int | None = Field(None, ge=0)
    vgg_widths: tuple[int, ...] = (16, 32, 64, 128)
    vgg_convs_per_stage: int = Field(2, ge=1, le=4)
    vgg_batch_norm: bool = True
    image_normalization: ImageNormalization = "inception"

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.pretrained and self.arch != "efficientnet":
            raise ValueError(f"the {self.arch} tower has no pretrained weights; leave pretrained unset")
        unknown = [name for name in self.labels if name not in CHEXPERT_LABELS]
        if unknown or not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct CheXpert observations (unknown: {unknown})")
        if self.arch == "vgg" and self.image_size < 2 ** len(self.vgg_widths):
            raise ValueError(f"image_size must be at least {2 ** len(self.vgg_widths)} for this VGG")
        return self

    @property
    def use_pretrained(self) -> bool:
        """Whether the tower starts from ImageNet weights (the EfficientNet default)."""
        return self.arch == "efficientnet" if self.pretrained is None else self.pretrained


def masked_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    uncertain: UncertainPolicy = "ignore",
    blank: BlankPolicy = "ignore",
) -> torch.Tensor:
    """Mean binary cross-entropy over the known labels of a B×L batch (1 / 0 / -1 / NaN for blank).

    Entries that are ignored (blank with ``blank="ignore"``, -1 with ``uncertain="ignore"``) contribute
    nothing and do not count in the mean. A batch with no known label gives 0 (graph kept connected).
    """
    if logits.shape != labels.shape:
        raise InputError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in shape")
    labels = labels.to(logits.dtype)
    is_blank = torch.isnan(labels)
    is_uncertain = labels == -1
    valid = ~is_blank
    targets = torch.where(is_blank, torch.zeros_like(labels), labels)
    if blank == "negative":
        valid = torch.ones_like(valid)
    if uncertain == "ignore":
        valid = valid & ~is_uncertain
    targets = torch.where(is_uncertain, torch.full_like(targets, float(uncertain == "positive")), targets)
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    count = valid.sum()
    if int(count) == 0:
        return logits.sum() * 0.0
    return (losses * valid).sum() / count


class _VGGTower(nn.Module):
    """The conv stages of :class:`~radlens.models.vgg.VGGClassifier` + global average pooling.

    Grey input; 3-channel input is averaged to grey. Pixels are normalised to [-1, 1].
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        vgg = VGGClassifier(
            VGGConfig(
                in_channels=1,
                widths=config.vgg_widths,
                convs_per_stage=config.vgg_convs_per_stage,
                batch_norm=config.vgg_batch_norm,
                labels=config.labels,
            )
        )
        self.features = vgg.features
        self.pool = vgg.pool
        self.flatten = vgg.flatten
        self.cam_layer = vgg.cam_layer
        self.out_dim = config.vgg_widths[-1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] == 3:
            pixel_values = pixel_values.mean(dim=1, keepdim=True)
        return self.flatten(self.pool(self.features((pixel_values - 0.5) / 0.5)))


class _EfficientNetTower(nn.Module):
    """EfficientNet-Lite0 returning the pooled 1280-d features (grey input is repeated to 3 channels)."""

    def __init__(self, config: ClassifierConfig, load_pretrained: bool) -> None:
        super().__init__()
        tower_config = ImageTowerConfig(
            name="efficientnet_lite0",
            pretrained=config.use_pretrained,
            image_size=config.image_size,
            normalization=config.image_normalization,
        )
        self.net = EfficientNetLite0Tower(tower_config, load_pretrained=load_pretrained)
        self.net.freeze(config.trainable_stages)
        self.cam_layer = f"net.{self.net.feature_layer}"
        self.out_dim = self.net.out_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values).pooled


@register_model("chexpert_classifier")
class CheXpertClassifier(nn.Module):
    """Image tower → dropout → linear ``head`` with one logit per label.

    ``labels`` names the outputs (so ``explain(model, x, target="Pleural Effusion")`` works) and
    ``cam_layer`` the tower's last rectified feature map (Grad-CAM's default layer).
    """

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig | None = None, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        self.labels = self.config.labels
        if self.config.arch == "vgg":
            self.tower: _VGGTower | _EfficientNetTower = _VGGTower(self.config)
        else:
            self.tower = _EfficientNetTower(self.config, load_pretrained)
        self.cam_layer = f"tower.{self.tower.cam_layer}"
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(self.tower.out_dim, len(self.labels))
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        columns = [CHEXPERT_LABELS.index(name) for name in self.labels]
        self.register_buffer("label_columns", torch.tensor(columns, dtype=torch.long), persistent=False)

    label_columns: torch.Tensor

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """B×C×H×W pixels in [0, 1] (C = 1 or 3) → B×len(labels) logits."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] not in (1, 3):
            raise InputError(
                f"image batch must be B×1×H×W or B×3×H×W, got shape {tuple(pixel_values.shape)}",
                "pass grey or RGB images with a batch dimension",
            )
        return self.head(self.dropout(self.tower(pixel_values)))

    def select_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """This model's columns of a B×14 CheXpert label tensor (in :data:`CHEXPERT_LABELS` order)."""
        if labels.ndim != 2 or labels.shape[1] != len(CHEXPERT_LABELS):
            raise InputError(f"labels must be B×{len(CHEXPERT_LABELS)}, got {tuple(labels.shape)}")
        return labels.index_select(1, self.label_columns.to(labels.device))

    def loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Masked BCE of a batch with ``image`` (or ``pixel_values``) and 14-column ``labels``."""
        images = batch["image"] if "image" in batch else batch["pixel_values"]
        logits = self(images)
        targets = self.select_labels(batch["labels"])
        return masked_bce(logits, targets, self.config.uncertain, self.config.blank)

    @torch.no_grad()
    def predict_proba(self, pixel_values: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Sigmoid probabilities (N×L) in eval mode, ``batch_size`` images at a time; mode restored."""
        was_training = self.training
        self.eval()
        try:
            parts = [
                torch.sigmoid(self(pixel_values[start : start + batch_size]))
                for start in range(0, pixel_values.shape[0], batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(parts) if parts else torch.empty(0, len(self.labels))

"""A small VGG-style classifier for the 14 CheXpert labels.

Plain conv-BN-ReLU blocks with max-pooling between stages, global average pooling and one linear head:
the architecture LRP and Grad-CAM were designed on, small enough to train and explain on a CPU. Every
layer is a named module (``features.conv2_1``, ``features.pool2``, ``head``), so explanation layers can be
picked by name, and nothing is in-place or functional, so hooks see every step.

The head returns one logit per label (multi-label: apply a sigmoid, not a softmax).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Self

import torch
from pydantic import Field, model_validator
from torch import nn

from radlens.core import Config
from radlens.data.schema import CHEXPERT_LABELS
from radlens.models.checkpoint import register_model


class VGGConfig(Config):
    """Size of a :class:`VGGClassifier`.

    ``widths`` gives the channels of each stage (one max-pool after each); ``convs_per_stage`` how many
    3×3 conv-BN-ReLU blocks a stage has. ``bias`` adds biases to the convs (only without batch norm, whose
    shift replaces them) and the head. ``labels`` names the outputs (default: the 14 CheXpert labels).
    """

    in_channels: int = Field(1, ge=1, le=4)
    widths: tuple[int, ...] = (16, 32, 64, 128)
    convs_per_stage: int = Field(2, ge=1, le=4)
    batch_norm: bool = True
    bias: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    labels: tuple[str, ...] = CHEXPERT_LABELS

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.widths or any(width < 1 for width in self.widths):
            raise ValueError("widths must be a non-empty list of positive channel counts")
        if not self.labels:
            raise ValueError("labels must name at least one output")
        return self


@register_model("vgg_classifier")
class VGGClassifier(nn.Module):
    """VGG-style CNN: ``features`` (conv-BN-ReLU × n, max-pool) per stage → global average pool → ``head``.

    ``forward(x)`` takes B×C×H×W images (any H, W ≥ 2^stages) and returns B×len(labels) logits.
    ``cam_layer`` names the last ReLU of the last stage: the default Grad-CAM layer (rectified features at
    the finest resolution the head sees). Registered as ``vgg_classifier`` for radlens checkpoints.
    """

    config_class = VGGConfig

    def __init__(self, config: VGGConfig | None = None, load_pretrained: bool = True) -> None:
        """Build from ``config``; ``load_pretrained`` is accepted for the checkpoint API (no weights exist)."""
        super().__init__()
        self.config = config or VGGConfig()
        self.labels = self.config.labels
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels = self.config.in_channels
        for stage, width in enumerate(self.config.widths, start=1):
            for index in range(1, self.config.convs_per_stage + 1):
                suffix = f"{stage}_{index}"
                use_bias = self.config.bias and not self.config.batch_norm
                blocks[f"conv{suffix}"] = nn.Conv2d(channels, width, 3, padding=1, bias=use_bias)
                if self.config.batch_norm:
                    blocks[f"bn{suffix}"] = nn.BatchNorm2d(width)
                blocks[f"relu{suffix}"] = nn.ReLU()
                channels = width
                self.cam_layer = f"features.relu{suffix}"
            blocks[f"pool{stage}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(channels, len(self.labels), bias=self.config.bias)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W images → B×len(labels) logits."""
        return self.head(self.dropout(self.flatten(self.pool(self.features(x)))))

"""Tiny models for the explanation tests: each small enough that a whole method runs in milliseconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from radlens.models.vgg import VGGClassifier, VGGConfig


def randomise_batchnorm(model: nn.Module, seed: int = 0, zero_shift: bool = False) -> nn.Module:
    """Give every BatchNorm non-trivial statistics (as after training); ``zero_shift`` keeps μ = β = 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                shift = 0.0 if zero_shift else 0.2
                module.running_mean.copy_(torch.randn(size, generator=generator) * shift)
                module.bias.copy_(torch.randn(size, generator=generator) * shift)
    return model


def small_vgg(dtype: torch.dtype = torch.float64, seed: int = 0, **config: Any) -> VGGClassifier:
    """A two-stage VGG with random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    settings = {"widths": (4, 8), "convs_per_stage": 1, "labels": ("a", "b", "c")} | config
    model = VGGClassifier(VGGConfig(**settings))
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        if model.head.bias is not None:
            model.head.bias.normal_(0, 0.3)
    return randomise_batchnorm(model, seed).to(dtype).eval()


class QuadrantNet(nn.Module):
    """Sees only the top-right quadrant of its input: everything else is multiplied by zero."""

    def __init__(self, height: int = 12, width: int = 20) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, height, width)
        mask[..., : height // 2, width // 2 :] = 1
        self.register_buffer("mask", mask)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(6, 2)
        with torch.no_grad():
            self.head.weight.abs_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.mask
        return self.head(self.flatten(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))))


class TinyMBConvNet(nn.Module):
    """EfficientNet-Lite-like: stem, two inverted-residual blocks with skip additions, functional mean pool."""

    def __init__(self) -> None:
        super().__init__()

        def conv_bn(c_in: int, c_out: int, kernel: int, groups: int = 1, act: bool = True) -> nn.Sequential:
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False),
                nn.BatchNorm2d(c_out),
            ]
            return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)

        self.stem = conv_bn(1, 4, 3)
        self.blocks = nn.ModuleList(
            nn.Sequential(conv_bn(4, 8, 1), conv_bn(8, 8, 3, groups=8), conv_bn(8, 4, 1, act=False))
            for _ in range(2)
        )
        self.head = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem((x - 0.5) / 0.25)
        for block in self.blocks:
            x = block(x) + x
        return self.head(x.mean(dim=(2, 3)))


class TextClassifier(nn.Module):
    """Token ids (+ mask) → masked mean of embeddings → tanh → logits."""

    def __init__(self, vocab: int = 20, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(ids) * weights).sum(1) / weights.sum(1)
        return self.head(torch.tanh(pooled))


class ImageTextModel(nn.Module):
    """A dual-input model: conv features of the image and mean token embedding, fused by a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.embed = nn.Embedding(12, 3)
        self.head = nn.Linear(6, 2)

    def forward(self, image: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        visual = torch.tanh(self.conv(image)).mean(dim=(2, 3))
        text = torch.tanh(self.embed(ids).mean(1))
        return self.head(torch.cat([visual, text], dim=1))


def vgg_classifier_checkpoint(folder: Path) -> Path:
    """A 64 px VGG CheXpert classifier saved to ``folder``, its head spread so the labels' scores differ."""
    from radlens.models.checkpoint import save_checkpoint
    from radlens.models.classifier import CheXpertClassifier, ClassifierConfig

    torch.manual_seed(0)
    model = CheXpertClassifier(ClassifierConfig(arch="vgg", image_size=64, vgg_widths=(8, 16)))
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
    return save_checkpoint(model, folder)

"""The VGG-style CheXpert classifier: shapes, layer names, config validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from radlens.data.schema import CHEXPERT_LABELS
from radlens.models.vgg import VGGClassifier, VGGConfig


def test_default_vgg_outputs_one_logit_per_chexpert_label() -> None:
    model = VGGClassifier().eval()
    assert model.labels == CHEXPERT_LABELS
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 64, 48))
    assert logits.shape == (2, 14)
    names = dict(model.named_modules())
    assert isinstance(names[model.cam_layer], nn.ReLU) and model.cam_layer == "features.relu4_2"
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_vgg_config_shapes_the_network() -> None:
    config = VGGConfig(
        in_channels=3, widths=(8, 16, 32), convs_per_stage=1, batch_norm=False, labels=("x", "y")
    )
    model = VGGClassifier(config)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32] and convs[0].in_channels == 3
    assert all(c.bias is not None for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 2)
    assert VGGConfig.from_yaml(config.to_yaml()) == config
    bias_free = VGGClassifier(VGGConfig(batch_norm=False, bias=False, widths=(4,)))
    assert all(
        getattr(m, "bias", None) is None for m in bias_free.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    )


def test_vgg_config_rejects_bad_sizes() -> None:
    with pytest.raises(ValidationError):
        VGGConfig(widths=())
    with pytest.raises(ValidationError):
        VGGConfig(widths=(8, 0))
    with pytest.raises(ValidationError):
        VGGConfig(convs_per_stage=0)
    with pytest.raises(ValidationError):
        VGGConfig(unknown=1)  # type: ignore[call-arg]

"""Session fixtures for the explanation tests (models live in explain_models.py)."""

from __future__ import annotations

import pytest
import torch
from explain_models import small_vgg

from radlens.models.vgg import VGGClassifier


@pytest.fixture(scope="session")
def vgg64() -> VGGClassifier:
    """A small float64 VGG with random BatchNorm statistics."""
    return small_vgg()


@pytest.fixture(scope="session")
def images64() -> torch.Tensor:
    """Two 16×16 grey images in [0, 1], float64."""
    return torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

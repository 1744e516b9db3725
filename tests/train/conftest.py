"""Shared fixture: a 24-study RadPhantom dataset (tiny configs live in train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.phantom.spec import PhantomConfig
from radlens.phantom.writer import generate_dataset


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 studies at 64 px: 19 train, 3 validate, 2 test (seed 0)."""
    out = tmp_path_factory.mktemp("train-data") / "phantom"
    generate_dataset(PhantomConfig(studies=24, size=64, seed=0, workers=1), out)
    return out

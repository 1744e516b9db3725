"""Test-wide settings: deterministic, single-threaded torch so tests are reproducible on 2 cores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch

torch.set_num_threads(1)


import pytest  # noqa: E402

from radlens.core import set_quiet  # noqa: E402


@pytest.fixture(autouse=True)
def _progress_shown() -> None:
    """``--quiet`` is process-wide state; a CLI test that sets it must not silence the next test."""
    set_quiet(False)

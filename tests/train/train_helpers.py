"""Tiny model and training configs for fast CPU tests, and a YAML writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tiny_models import TINY_DUAL_VALUES

#: The tiny dual encoder as ``--config`` values; the stages are set explicitly (None: train all) so the
#: cpu-demo preset's freezing does not apply.
TINY_DUAL: dict[str, Any] = TINY_DUAL_VALUES | {
    "image_size": 32,
    "text_layers": 2,
    "max_length": 48,
    "trainable_image_stages": None,
    "trainable_text_stages": None,
}

TINY_FUSION: dict[str, Any] = {
    "image_source": "patch",
    "pretrained": False,
    "image_size": 32,
    "patch_size": 16,
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 64,
    "max_text_length": 48,
}

TINY_TRAIN: dict[str, Any] = {
    "batch_size": 4,
    "max_steps": 4,
    "warmup_steps": 1,
    "checkpoint_every": 2,
    "lr": 1e-3,
}


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path

"""Tiny model and training configs for fast CPU tests, and a YAML writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_DUAL: dict[str, Any] = {
    "image_tower": "small_cnn",
    "text_tower": "small_bert",
    "pretrained": False,
    "embed_dim": 16,
    "image_size": 32,
    "in_channels": 1,
    "image_width": 32,
    "image_depth": 2,
    "text_hidden_size": 32,
    "text_layers": 2,
    "text_heads": 2,
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

"""Tiny model configs shared by test folders: each test overrides only the sizes it cares about."""

from __future__ import annotations

from typing import Any

from radlens.models import DualEncoderConfig

#: The fields of a from-scratch dual encoder (small CNN, 1-layer BERT) that runs in milliseconds on a CPU.
TINY_DUAL_VALUES: dict[str, Any] = {
    "image_tower": "small_cnn",
    "text_tower": "small_bert",
    "pretrained": False,
    "embed_dim": 16,
    "image_size": 64,
    "in_channels": 1,
    "image_width": 32,
    "image_depth": 2,
    "text_hidden_size": 32,
    "text_layers": 1,
    "text_heads": 2,
    "max_length": 32,
}


def tiny_dual_config(**changes: Any) -> DualEncoderConfig:
    """:data:`TINY_DUAL_VALUES` with ``changes``, validated."""
    return DualEncoderConfig(**(TINY_DUAL_VALUES | changes))

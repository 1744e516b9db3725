"""Named starting points for ``radlens train retrieval``: training options plus model config values.

A preset is a nested mapping merged under ``--config file.yaml`` and the command-line options (which win):
``train`` holds :class:`~radlens.train.loop.TrainConfig` values, ``dual_encoder`` / ``fusion`` / ``metric``
the model section of the chosen ``--model``, and top-level keys the run options (``precompute_frozen``,
``augment``, ...).

- ``paper``: for real data (MIMIC-CXR). lr 2e-5, weight decay 1e-4, 2,500 warm-up steps, batch 20 and
  seed 42 are the published recipe; everything else (towers at 224 px, all stages trained, 50,000 steps,
  augmentation) is radlens's choice — set ``max_steps`` for your data.
- ``cpu-demo``: trains on RadPhantom within 15 minutes on 2 CPU cores (8,000 studies: 13.3–14.4 min; the
  demo's 1,200: about 9.5). Only the top of the ImageNet EfficientNet-Lite0 (its last 6 stages: the
  blocks at 1/32 of the image and the head) and the last layer of all-MiniLM-L6-v2 are trained, on 160 px
  images whose frozen features are computed once (``precompute_frozen``), with label-aware InfoNCE
  targets (``label_set_weight`` 0.5), at lr 1e-3. Training 6 image stages rather than 1 lifted held-out
  recall@10 from 0.44 to 0.53 on 8,000 studies, and lr 1e-3 rather than 3e-4 to 0.54 / 0.56 (0.43 from
  0.27 on the demo's 1,200) (docs/retrieval.md).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal, get_args

from radlens.core import InputError

PresetName = Literal["cpu-demo", "paper"]
PRESET_NAMES: tuple[str, ...] = get_args(PresetName)

_PAPER_TRAIN = {
    "lr": 2e-5,
    "weight_decay": 1e-4,
    "warmup_steps": 2500,
    "batch_size": 20,
    "seed": 42,
    "max_steps": 50_000,
    "checkpoint_every": 2500,
    "num_workers": 4,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "dual": {
            "train": _PAPER_TRAIN,
            "augment": True,
            "dual_encoder": {
                "image_tower": "efficientnet_lite0",
                "text_tower": "minilm",
                "pretrained": True,
                "image_size": 224,
                "max_length": 128,
                "embed_dim": 256,
            },
        },
        "fusion": {
            "train": _PAPER_TRAIN,
            "augment": True,
            "fusion": {
                "image_source": "efficientnet_lite0",
                "pretrained": True,
                "image_size": 224,
                "patch_size": 32,
                "max_text_length": 128,
            },
        },
        "metric": {"train": {**_PAPER_TRAIN, "max_steps": 20_000, "batch_size": 256}, "metric": {}},
    },
    "cpu-demo": {
        "dual": {
            "train": {
                "lr": 1e-3,  # 3e-4 under-trained the image top: lower recall and precision (docs/retrieval.md)
                "weight_decay": 1e-4,
                "warmup_steps": 20,
                "max_steps": 400,
                "batch_size": 32,
                "seed": 42,
                "checkpoint_every": 100,
            },
            "precompute_frozen": True,
            "dual_encoder": {
                "image_tower": "efficientnet_lite0",
                "text_tower": "minilm",
                "pretrained": True,
                "image_size": 160,
                "max_length": 128,
                "embed_dim": 128,
                "trainable_image_stages": 6,
                "trainable_text_stages": 1,
                "label_set_weight": 0.5,
            },
        },
        "fusion": {
            "train": {
                "lr": 5e-4,
                "weight_decay": 1e-4,
                "warmup_steps": 15,
                "max_steps": 150,
                "batch_size": 16,
                "seed": 42,
                "checkpoint_every": 50,
            },
            "fusion": {
                "image_source": "efficientnet_lite0",
                "pretrained": True,
                "trainable_image_stages": 1,
                "image_size": 128,
                "patch_size": 32,
                "hidden_size": 128,
                "num_layers": 2,
                "num_heads": 4,
                "intermediate_size": 512,
                "max_text_length": 96,
            },
        },
        "metric": {
            "train": {
                "lr": 1e-3,
                "weight_decay": 1e-4,
                "warmup_steps": 10,
                "max_steps": 300,
                "batch_size": 128,
                "seed": 42,
                "checkpoint_every": 100,
            },
            "metric": {"out_dim": 64},
        },
    },
}


def preset_values(preset: str, model: str) -> dict[str, Any]:
    """A deep copy of the values preset ``preset`` gives ``--model model``."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESET_NAMES)}")
    if model not in PRESETS[preset]:
        raise InputError(f"unknown model {model!r}", f"use one of {', '.join(PRESETS[preset])}")
    return copy.deepcopy(PRESETS[preset][model])


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged

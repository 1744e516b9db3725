"""A tiny retrieval world shared by the retrieval and CLI tests: built once per test process.

24 RadPhantom studies at 64 px; a tiny dual encoder (``small_cnn`` + ``small_bert``, 32 px) trained
until it pairs every training image with its own report; a second, untrained dual encoder (another
fingerprint); a tiny fusion model for re-ranking; and an index built from the trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from radlens.data.images import load_image
from radlens.data.readers import read_dataset
from radlens.data.schema import StudyRecord
from radlens.data.transforms import ResizePolicy, resize
from radlens.models import (
    DualEncoder,
    DualEncoderConfig,
    FusionConfig,
    FusionModel,
    save_checkpoint,
)
from radlens.phantom.spec import PhantomConfig
from radlens.phantom.writer import generate_dataset
from radlens.retrieval.build import build_index
from tiny_models import tiny_dual_config

IMAGE_SIZE = 32
MAX_LENGTH = 64


@dataclass(frozen=True)
class World:
    data: Path
    records: list[StudyRecord]
    dual: Path  # trained dual encoder checkpoint
    other: Path  # untrained dual encoder (another fingerprint)
    fusion: Path  # tiny fusion checkpoint (records negatives "NE")
    index: Path  # flat index of every study, built with ``dual``


_WORLDS: dict[Path, World] = {}


def dual_config() -> DualEncoderConfig:
    return tiny_dual_config(embed_dim=32, image_size=IMAGE_SIZE, image_width=16, max_length=MAX_LENGTH)


def pixels(records: list[StudyRecord], size: int = IMAGE_SIZE) -> torch.Tensor:
    """The studies' first images as an N×1×size×size tensor in [0, 1] (decoded afresh)."""
    policy = ResizePolicy(mode="square", size=size)
    return torch.from_numpy(np.stack([resize(load_image(r.images[0].path), policy) for r in records]))[
        :, None
    ]


def _train(records: list[StudyRecord]) -> DualEncoder:
    """Fit the tiny dual encoder until every image's best report is its own and vice versa."""
    torch.manual_seed(0)
    model = DualEncoder(dual_config())
    images = pixels(records)
    texts = [record.report_text() for record in records]
    tokens = model.tokenize(texts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    target = torch.arange(len(records))
    for step in range(200):
        model.train()
        loss = model(images, tokens["input_ids"], tokens["attention_mask"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 30 and step % 5 == 0:
            scores = model.similarity(images, texts)
            if bool((scores.argmax(0) == target).all() and (scores.argmax(1) == target).all()):
                break
    return model.eval()


def world(factory: pytest.TempPathFactory) -> World:
    """The shared world under this session's temporary root (built on first use)."""
    root = factory.getbasetemp()
    if root not in _WORLDS:
        folder = factory.mktemp("retrieval-world")
        data = folder / "phantom"
        generate_dataset(PhantomConfig(studies=24, size=64, seed=0, workers=1), data)
        records = read_dataset(data, "mimic").records
        save_checkpoint(_train(records), folder / "dual")
        torch.manual_seed(1)
        save_checkpoint(DualEncoder(dual_config()), folder / "other")
        torch.manual_seed(2)
        fusion = FusionModel(
            FusionConfig(
                hidden_size=32,
                num_layers=1,
                num_heads=2,
                intermediate_size=64,
                image_size=IMAGE_SIZE,
                patch_size=8,
                in_channels=1,
                max_text_length=MAX_LENGTH,
            )
        )
        torch.nn.init.normal_(fusion.itm_score.weight, std=1.0)  # spread P(related) so re-ranking reorders
        save_checkpoint(fusion, folder / "fusion", extra={"negatives": "NE"})
        build_index(folder / "dual", data, folder / "index", cache_dir=folder / "cache")
        _WORLDS[root] = World(
            data, records, folder / "dual", folder / "other", folder / "fusion", folder / "index"
        )
    return _WORLDS[root]

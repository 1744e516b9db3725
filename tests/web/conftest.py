"""A small real index for the web tests: RadPhantom (24 studies, 64 px), a tiny untrained dual encoder
(small_cnn + small_bert) saved as a checkpoint, and its index — all built with radlens's own functions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from radlens.phantom.spec import PhantomConfig
from radlens.phantom.writer import generate_dataset


@dataclass
class WebData:
    root: Path
    phantom: Path
    model: Path
    index: Path


@pytest.fixture(scope="session")
def web_data(tmp_path_factory: pytest.TempPathFactory) -> WebData:
    from radlens.models.checkpoint import save_checkpoint
    from radlens.models.dual_encoder import DualEncoder
    from radlens.retrieval.build import build_index
    from tiny_models import tiny_dual_config

    root = tmp_path_factory.mktemp("web")
    data = WebData(root, root / "phantom", root / "model", root / "index")
    generate_dataset(PhantomConfig(studies=24, size=64, seed=3, workers=1), data.phantom)
    torch.manual_seed(0)
    config = tiny_dual_config()
    save_checkpoint(DualEncoder(config), data.model)
    build_index(data.model, data.phantom, data.index)
    return data


@pytest.fixture(scope="session")
def retriever(web_data: WebData) -> Any:
    from radlens.retrieval.retriever import Retriever

    return Retriever.load(web_data.index, web_data.model)


@pytest.fixture(scope="session")
def app(retriever: Any) -> Any:
    from radlens.web.app import create_app

    return create_app(retriever)


@pytest.fixture(scope="session")
def client(app: Any) -> Any:
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client

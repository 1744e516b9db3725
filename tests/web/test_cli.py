"""``radlens serve`` and ``radlens demo``: options, binding, and the demo's build-once-then-reuse steps."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
import uvicorn
from PIL import Image
from typer.testing import CliRunner

from radlens.cli import demo_cmd, serve_cmd
from radlens.core import InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    serve_cmd.register(app)
    demo_cmd.register(app)
    return app


def test_serve_binds_loopback_and_prints_the_url(
    cli: typer.Typer, web_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: dict[str, Any] = {}

    def fake_run(self: uvicorn.Server, sockets: list[socket.socket]) -> None:
        served["app"], served["socket"] = self.config.app, sockets[0]

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    args = ["serve", "--index", str(web_data.index), "--model", str(web_data.model), "--port", "0"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    host, port = served["socket"].getsockname()[:2]
    served["socket"].close()
    assert host == "127.0.0.1"  # loopback unless --host says otherwise
    assert f"http://127.0.0.1:{port}/" in result.output
    assert "24 studies" in result.output
    assert served["app"].title == "radlens"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--port", "70000"], "--port"),
        (["--max-upload-mb", "0"], "--max-upload-mb"),
        (["--queue", "0"], "--queue"),
        (["--cors-origin", "*"], "--cors-origin"),
    ],
)
def test_serve_refuses_bad_options(cli: typer.Typer, web_data: Any, extra: list[str], words: str) -> None:
    result = runner.invoke(
        cli, ["serve", "--index", str(web_data.index), "--model", str(web_data.model), *extra]
    )
    assert isinstance(result.exception, InputError)
    assert words in str(result.exception)


def test_serve_refuses_a_port_in_use_before_loading(cli: typer.Typer, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The index does not exist either: the port is checked first, so that is the error reported.
        result = runner.invoke(
            cli, ["serve", "--index", str(tmp_path), "--model", str(tmp_path), "--port", str(port)]
        )
    assert isinstance(result.exception, InputError)
    assert f"127.0.0.1:{port}" in str(result.exception)


def test_serve_reports_a_missing_index(cli: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(
        cli, ["serve", "--index", str(tmp_path / "none"), "--model", str(tmp_path), "--port", "0"]
    )
    assert isinstance(result.exception, InputError)
    assert "not found" in str(result.exception)


TINY_TRAINING = """\
precompute_frozen: false
train: {max_steps: 3, batch_size: 8, warmup_steps: 1, checkpoint_every: 100}
dual_encoder:
  image_tower: small_cnn
  text_tower: small_bert
  pretrained: false
  image_size: 64
  in_channels: 1
  embed_dim: 16
  image_width: 32
  image_depth: 2
  text_hidden_size: 32
  text_layers: 1
  text_heads: 2
  max_length: 32
  trainable_image_stages: null
  trainable_text_stages: null
"""


def _stamps(out: Path) -> dict[str, int]:
    files = ("phantom/manifest.json", "phantom_grid.png", "model/model.safetensors", "index/index.json")
    return {name: (out / name).stat().st_mtime_ns for name in files}


def test_demo_builds_each_step_once_then_reuses_it(cli: typer.Typer, tmp_path: Path) -> None:
    from radlens.retrieval.retriever import Retriever

    training = tmp_path / "tiny.yaml"
    training.write_text(TINY_TRAINING)
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--no-serve",
        "--studies",
        "24",
        "--size",
        "64",
        "--train-config",
        str(training),
    ]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert first.output.count("building") == 3
    built = _stamps(out)
    assert len(Retriever.load(out / "index", out / "model")) == 24
    assert (out / "config.yaml").is_file() and (out / "versions.json").is_file()
    with Image.open(out / "phantom_grid.png") as grid:  # 16 tiles of the 24 studies, 4 columns
        assert grid.width > 4 * 64 and grid.height > grid.width // 2

    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert second.output.count("reused") == 3 and "building" not in second.output
    assert _stamps(out) == built  # nothing was rewritten

    (out / "index" / "texts.faiss").write_bytes(b"damaged")  # only the last step is invalid now
    third = runner.invoke(cli, args)
    assert third.exit_code == 0, third.output
    assert third.output.count("reused") == 2 and "building" in third.output
    rebuilt = _stamps(out)
    assert rebuilt["model/model.safetensors"] == built["model/model.safetensors"]
    assert rebuilt["index/index.json"] != built["index/index.json"]
    assert len(Retriever.load(out / "index", out / "model")) == 24


def test_demo_validity_checks_follow_options_and_fingerprints(web_data: Any, tmp_path: Path) -> None:
    same = demo_cmd.DemoConfig(out=str(tmp_path), studies=24, size=64, seed=3)  # as the session fixture
    assert demo_cmd.phantom_is_valid(web_data.phantom, same)
    for change in ({"seed": 0}, {"size": 128}, {"studies": 25}):
        assert not demo_cmd.phantom_is_valid(web_data.phantom, same.model_copy(update=change))
    assert not demo_cmd.model_is_valid(web_data.model)  # a checkpoint, but not a finished training run
    assert demo_cmd.index_is_valid(web_data.index, web_data.model)
    other = tmp_path / "other-model"
    from radlens.models.checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(web_data.model)
    with torch.no_grad():
        model.logit_scale.add_(1.0)  # any change of weights is another model
    save_checkpoint(model, other)
    assert not demo_cmd.index_is_valid(web_data.index, other)


def test_served_connections_send_without_nagle_delay() -> None:
    """asyncio disables Nagle's algorithm only when the listening socket names TCP; with it on, every
    response on a kept-alive connection waited ~40 ms for the client's delayed ACK."""
    import asyncio

    listening = serve_cmd.bind_socket("127.0.0.1", 0)

    async def accepted_nodelay() -> int:
        seen: dict[str, int] = {}

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen["nodelay"] = writer.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
            writer.close()

        server = await asyncio.start_server(handle, sock=listening)
        reader, writer = await asyncio.open_connection(*listening.getsockname()[:2])
        await reader.read()  # until the server closes the connection
        writer.close()
        server.close()
        await server.wait_closed()
        return seen["nodelay"]

    assert asyncio.run(accepted_nodelay()) != 0

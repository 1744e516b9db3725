"""``radlens demo``: RadPhantom data → cpu-demo retrieval model → index → the web app, in one command.

Each step is skipped when its output already exists and is valid, so a second run only loads the model
and serves (within seconds). A step whose input was just rebuilt runs again, like ``make``:

1. ``OUT/phantom``: a RadPhantom dataset; valid when its ``manifest.json`` records the same options.
   ``OUT/phantom_grid.png`` shows its first 16 studies with their masks and labels.
2. ``OUT/model``: ``radlens train retrieval --model dual --preset cpu-demo``; valid when the final model
   and ``validation.json`` are there. An interrupted training run is resumed exactly.
3. ``OUT/index``: ``radlens index build`` over every study; valid when it opens and was built by
   ``OUT/model`` (same fingerprint).
4. serve: ``radlens serve`` on 127.0.0.1, printing the URL.

Everything is written atomically by the steps themselves, so an interrupted demo leaves nothing
half-made; ``OUT/config.yaml`` + ``versions.json`` record the demo's options.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from pydantic import Field

from radlens.core import Config, InputError, check_writable_folder, write_run_metadata

#: Studies in the demo dataset: enough for the cpu-demo preset to learn side and finding (~90 % of them
#: are in the train split), few enough to generate in well under a minute on 2 cores.
DEMO_STUDIES = 1200
DEMO_SIZE = 256


class DemoConfig(Config):
    """The demo's options (``OUT/config.yaml``)."""

    out: str
    studies: int = Field(DEMO_STUDIES, ge=24)
    size: int = Field(DEMO_SIZE, ge=64, le=1024)
    seed: int = 0
    train_config: str | None = None


def _say(message: str) -> None:
    typer.echo(message)


def phantom_is_valid(folder: Path, config: DemoConfig) -> bool:
    """Whether ``folder`` holds a complete RadPhantom dataset generated with the demo's options."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    recorded = manifest.get("config") if isinstance(manifest, dict) else None
    if not isinstance(recorded, dict):
        return False
    wanted = {"studies": config.studies, "size": config.size, "seed": config.seed}
    return all(recorded.get(key) == value for key, value in wanted.items()) and (folder / "files").is_dir()


def model_is_valid(folder: Path) -> bool:
    """Whether ``folder`` holds a finished dual-encoder training run (final model + validation.json)."""
    from radlens.models.checkpoint import read_checkpoint_info

    try:
        info = read_checkpoint_info(folder)
    except InputError:
        return False
    return info.model_type == "dual_encoder" and (folder / "validation.json").is_file()


def index_is_valid(folder: Path, model: Path) -> bool:
    """Whether ``folder`` is a readable index built by the model in ``model``."""
    from radlens.models.checkpoint import model_fingerprint
    from radlens.retrieval.index import RetrievalIndex

    try:
        return len(RetrievalIndex.open(folder, expected_fingerprint=model_fingerprint(model))) > 0
    except InputError:
        return False


def _generate(config: DemoConfig, folder: Path) -> None:
    from radlens.phantom.spec import PhantomConfig
    from radlens.phantom.writer import generate_dataset

    generate_dataset(
        PhantomConfig(studies=config.studies, size=config.size, seed=config.seed), folder, overwrite=True
    )
    _grid(folder)


def _grid(folder: Path) -> Path:
    """``phantom_grid.png`` beside the dataset: its first 16 studies, masks outlined, labels listed."""
    from radlens.data.readers.mimic import read_mimic
    from radlens.phantom.grid import write_grid

    return write_grid(read_mimic(folder).records[:16], folder.parent / "phantom_grid.png")


def _train(config: DemoConfig, data: Path, folder: Path) -> None:
    from radlens.train.retrieval import resolve_config, train_retrieval
    from radlens.train.state import saved_run_config

    options = {"data": str(data), "model": "dual", "preset": "cpu-demo"}
    run, resume = None, False
    try:  # an interrupted run with the same options continues exactly where it stopped
        if folder.is_dir() and saved_run_config(folder) is not None:
            run, resume = resolve_config(options, config.train_config, folder, resume=True), True
            _say("      resuming the interrupted training run")
    except InputError:  # damaged, or started with other options: train afresh
        run, resume = None, False
    if run is None:
        run = resolve_config(options, config.train_config, folder, resume=False)
    summary = train_retrieval(run, folder, resume=resume, overwrite=not resume)
    recall = [f"{key} {value:.3f}" for key, value in summary.validation.items() if "recall" in key.lower()]
    shown = f": validation {', '.join(recall)}" if recall else ""
    _say(f"      trained {summary.result.step} steps on {summary.train_studies} studies{shown}")


def _index(data: Path, model: Path, folder: Path) -> None:
    from radlens.retrieval.build import build_index

    summary = build_index(model, data, folder, overwrite=True)
    if summary.problems:
        _say(f"      skipped {len(summary.problems)} studies; see {folder / 'problems.jsonl'}")


def prepare(config: DemoConfig) -> tuple[Path, Path]:
    """Run the data, training and index steps that are needed; returns (index folder, model folder)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_run_metadata(out, config)
    data, model, index = out / "phantom", out / "model", out / "index"
    steps: list[tuple[str, Path, Any, Any]] = [
        ("RadPhantom data", data, lambda: phantom_is_valid(data, config), lambda: _generate(config, data)),
        (
            "retrieval model (cpu-demo)",
            model,
            lambda: model_is_valid(model),
            lambda: _train(config, data, model),
        ),
        ("search index", index, lambda: index_is_valid(index, model), lambda: _index(data, model, index)),
    ]
    rebuilt = False
    if phantom_is_valid(data, config) and not (out / "phantom_grid.png").is_file():
        _grid(data)
    for number, (name, folder, is_valid, build) in enumerate(steps, start=1):
        if not rebuilt and is_valid():
            _say(f"[{number}/4] {name}: {folder} (already there, reused)")
            continue
        _say(f"[{number}/4] {name}: building {folder} ...")
        start = time.perf_counter()
        build()
        rebuilt = True
        _say(f"      done in {time.perf_counter() - start:.0f} s")
    return index, model


def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for the data, model and index."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the web app at the end."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="Port to serve on (0: any free port)."),
    studies: int = typer.Option(DEMO_STUDIES, "--studies", help="RadPhantom studies to generate."),
    size: int = typer.Option(DEMO_SIZE, "--size", help="RadPhantom image side in pixels."),
    train_config: Path | None = typer.Option(
        None, "--train-config", help="YAML over the cpu-demo preset (as `train retrieval --config`)."
    ),
) -> None:
    """Generate RadPhantom data, train the cpu-demo retrieval model, index it and serve the web app."""
    from radlens.cli.serve_cmd import bind_socket, check_options, set_threads, start_server

    if studies < 24:
        raise InputError(f"--studies must be at least 24 (got {studies})", "the splits need enough studies")
    if not 64 <= size <= 1024:
        raise InputError(f"--size must be between 64 and 1024 pixels (got {size})")
    if train_config is not None and not train_config.is_file():
        raise InputError(f"--train-config {train_config} not found")
    check_writable_folder(out)  # an --out that is (or lies under) a file fails here, not as a crash
    check_options(port, 20.0, 16, [])
    sock = bind_socket(host, port) if serve else None  # a taken port fails before minutes of work
    try:
        config = DemoConfig(
            out=str(out),
            studies=studies,
            size=size,
            train_config=str(train_config) if train_config else None,
        )
        index, model = prepare(config)
        if sock is None:
            _say(f"[4/4] ready: radlens serve --index {index} --model {model}")
            return
        from radlens.retrieval.retriever import Retriever
        from radlens.web.app import Settings

        _say("[4/4] web app: loading the model ...")
        set_threads(1)
        retriever = Retriever.load(index, model)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    start_server(retriever, Settings(), sock, host)


def register(app: typer.Typer) -> None:
    """Add ``radlens demo`` to the CLI."""
    app.command("demo")(demo)

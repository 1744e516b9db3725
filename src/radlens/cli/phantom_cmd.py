"""``radlens phantom ...``: generate and look at RadPhantom datasets (docs/phantom.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from radlens.cli._output import report_skipped
from radlens.core import (
    Config,
    InputError,
    check_writable_folder,
    is_quiet,
    load_config,
    prepare_output_dir,
    write_run_metadata,
)
from radlens.data.schema import CHEXPERT_LABELS
from radlens.phantom.spec import PhantomConfig

phantom_app = typer.Typer(
    help="RadPhantom: synthetic chest radiographs with masks, MIMIC-style reports and CheXpert labels.",
    no_args_is_help=True,
)


class ShowConfig(Config):
    """Options of ``radlens phantom show``, written beside the picture grid."""

    dataset: str
    out: str
    n: int


def _check_options(
    studies: int | None, size: int | None, workers: int | None, confounder: str | None
) -> None:
    """One-line errors for command-line values, before the YAML file and pydantic get involved."""
    if studies is not None and studies <= 0:
        raise InputError(f"--studies must be a positive number of studies (got {studies})")
    if size is not None and not 64 <= size <= 1024:
        raise InputError(f"--size must be between 64 and 1024 pixels (got {size})")
    if workers is not None and workers < 0:
        raise InputError(f"--workers must be 0 (all cores) or more (got {workers})")
    if confounder is not None and confounder not in CHEXPERT_LABELS:
        raise InputError(
            f"unknown --confounder finding {confounder!r}", f"use one of: {', '.join(CHEXPERT_LABELS)}"
        )


@phantom_app.command("generate")
def generate(
    out: Path = typer.Option(..., "--out", help="Output folder (must be empty unless --overwrite)."),
    studies: int | None = typer.Option(None, "--studies", help="Number of studies (default 100)."),
    size: int | None = typer.Option(None, "--size", help="Image side in pixels, 64-1024 (default 256)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed: same seed, same bytes (default 0)."),
    style: Literal["clean", "clinical"] | None = typer.Option(
        None, "--style", help="clean: idealised images; clinical: harder exposure, noise and pose."
    ),
    confounder: str | None = typer.Option(
        None,
        "--confounder",
        help="Place a shortcut marker mostly in studies with this finding, e.g. 'Pleural Effusion'.",
    ),
    workers: int | None = typer.Option(None, "--workers", help="Worker processes; 0 = all cores (default)."),
    config_path: Path | None = typer.Option(
        None, "--config", help="YAML file of PhantomConfig options; command-line options override it."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the output folder if it is not empty (only a folder radlens wrote).",
    ),
) -> None:
    """Generate a RadPhantom dataset in the MIMIC-CXR-JPG layout (images, reports, labels, masks)."""
    from radlens.phantom.writer import generate_dataset

    _check_options(studies, size, workers, confounder)
    overrides = {"studies": studies, "size": size, "seed": seed, "style": style, "workers": workers}
    config = load_config(PhantomConfig, config_path, overrides)
    if confounder is not None:
        config.confounder = config.confounder.model_copy(update={"enabled": True, "finding": confounder})
    prepare_output_dir(out, overwrite)
    manifest = generate_dataset(config, out, overwrite=overwrite)
    counts = manifest["counts"]
    splits = ", ".join(f"{name} {value['studies']}" for name, value in counts["splits"].items())
    positives = sorted(
        ((value["positive"], name) for name, value in counts["labels"].items() if name != "No Finding"),
        reverse=True,
    )
    common = ", ".join(f"{name} {n}" for n, name in positives[:3])
    if not is_quiet():
        typer.echo(
            f"wrote {counts['studies']} studies of {counts['subjects']} subjects to {out} "
            f"({config.size} px, seed {config.seed}, {manifest['files']['masks']} masks)"
        )
        typer.echo(f"splits: {splits}; No Finding {counts['labels']['No Finding']['positive']}; {common}")


@phantom_app.command("show")
def show(
    dataset: Path = typer.Argument(..., help="A RadPhantom (or MIMIC-CXR-JPG) folder."),
    out: Path = typer.Option(..., "--out", help="Picture grid to write (PNG)."),
    n: int = typer.Option(16, "--n", help="Number of studies in the grid."),
) -> None:
    """Write a picture grid of the first studies with their masks outlined and labels."""
    from radlens.data.readers.mimic import read_mimic

    if n <= 0:
        raise InputError(f"--n must be a positive number of studies (got {n})")
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out} is not a .png file", "pass a path ending in .png")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder", "pass a file path ending in .png")
    check_writable_folder(out.parent)
    result = read_mimic(dataset)
    if not result.records:
        raise InputError(
            f"no studies found in {dataset}", "pass a folder written by 'radlens phantom generate'"
        )
    from radlens.phantom.grid import write_grid

    records = result.records[:n]
    written = write_grid(records, out)
    write_run_metadata(
        out.parent, ShowConfig(dataset=str(dataset), out=str(out), n=n), name=f"{out.stem}_config"
    )
    if not is_quiet():
        typer.echo(f"wrote a grid of {len(records)} studies to {written}")
    report_skipped(result.problems, dataset)


def register(app: typer.Typer) -> None:
    """Attach the ``phantom`` command group."""
    app.add_typer(phantom_app, name="phantom")

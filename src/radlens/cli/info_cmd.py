"""``radlens info``: what radlens runs on."""

from __future__ import annotations

import json

import typer

from radlens.core import collect_versions


def _runtime_facts() -> dict[str, str]:
    import torch

    facts = collect_versions()
    facts["torch_threads"] = str(torch.get_num_threads())
    if torch.cuda.is_available():
        facts["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        facts["gpu"] = "none"
    return facts


def info(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Versions of radlens, torch and numpy; CPU threads; GPUs."""
    facts = _runtime_facts()
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    width = max(len(key) for key in facts)
    for key, value in facts.items():
        typer.echo(f"{key:<{width}}  {value}")


def register(app: typer.Typer) -> None:
    app.command("info")(info)

"""Training checkpoints that resume exactly: model, optimiser, scheduler, RNG streams, position, log.

A checkpoint is a folder ``checkpoint-STEP/`` in the run folder::

    checkpoint-STEP/
        config.json, model.safetensors      the model (radlens.models.checkpoint: loadable on its own)
        training_state/
            state.json                      step, micro-batches consumed (the data position), epoch,
                                            processes, run config, elapsed seconds
            optimizer.safetensors/.json     AdamW state tensors / everything else (param groups, steps)
            scheduler.json                  the LambdaLR state (and the fp16 grad scaler, if any)
            rng.safetensors/.json           torch (and CUDA) generator states / Python and NumPy state,
                                            one entry per process
            metrics.jsonl                   the log rows up to STEP

``state.json`` also holds the partly-filled log window (``log_window``: the steps since the last log
row, their seconds and each process's running loss sums), so a resumed run's next row averages the same
steps as the uninterrupted run's; a checkpoint without it resumes with an empty window.

Tensors go to safetensors and the rest to JSON, so loading a checkpoint never unpickles anything. The
folder is built under a temporary name and renamed when complete (:func:`radlens.core.atomic_directory`):
a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from radlens.core import InputError, atomic_write_text
from radlens.models.checkpoint import LEGACY_VALUES

STATE_DIR = "training_state"
STATE_FORMAT = 1
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: Run-config fields that may change on resume: they decide bookkeeping, not what is computed.
RESUMABLE_CHANGES = frozenset(
    {"num_workers", "log_every", "checkpoint_every", "keep_checkpoints", "log_with"}
)
_NO_LEGACY = object()


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    """``out_dir/checkpoint-STEP`` (no zero padding: sorting is numeric, see :func:`list_checkpoints`)."""
    return out_dir / f"checkpoint-{step}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with ``training_state/state.json``) of a run, oldest first."""
    if not out_dir.is_dir():
        return []
    found = []
    for child in out_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and (child / STATE_DIR / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


# --- RNG ----------------------------------------------------------------------------------------------


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This process's Python, NumPy, torch and CUDA generator states as (JSON part, tensor part)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    info = {
        "python": [version, list(internal), gauss],
        "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": cached},
    }
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    return info, tensors


def restore_rng(info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Put back the states :func:`capture_rng` returned."""
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = info["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["name"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# --- optimiser ----------------------------------------------------------------------------------------


def split_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An optimiser ``state_dict`` as (JSON-able part, flat tensors named ``state.PARAM.NAME``)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def join_state_dict(info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Inverse of :func:`split_state_dict`."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = tensor
    for param_id, values in info["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": [dict(group) for group in info["param_groups"]]}


# --- whole checkpoints ----------------------------------------------------------------------------


@dataclass
class LogWindow:
    """The steps since the last log row: how many, their seconds, and per process the sum of each
    logged value (what the next row averages)."""

    steps: int = 0
    seconds: float = 0.0
    sums: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``log_window`` entry of ``state.json``."""
        return {"steps": self.steps, "seconds": self.seconds, "sums": self.sums}

    @classmethod
    def from_json(cls, value: Any) -> LogWindow:
        """Inverse of :meth:`to_json`; ``None`` (a checkpoint written before windows were saved) is empty."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping) or not isinstance(value["sums"], list):
            raise ValueError("log_window is not an object with a list of sums")
        sums = [{str(name): float(total) for name, total in dict(entry).items()} for entry in value["sums"]]
        return cls(steps=int(value["steps"]), seconds=float(value["seconds"]), sums=sums)


@dataclass
class SavedState:
    """What ``training_state/`` holds, read back."""

    folder: Path
    step: int
    micro_batches: int
    num_processes: int
    run_config: dict[str, Any]
    seconds: float
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: list[tuple[dict[str, Any], dict[str, torch.Tensor]]]
    records: list[dict[str, Any]] = field(default_factory=list)
    log_window: LogWindow = field(default_factory=LogWindow)


def write_training_state(
    folder: Path,
    *,
    step: int,
    micro_batches: int,
    epoch: float,
    run_config: Mapping[str, Any],
    seconds: float,
    optimizer: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    scaler: Mapping[str, Any] | None,
    rng: list[tuple[dict[str, Any], dict[str, torch.Tensor]]],
    records: list[dict[str, Any]],
    log_window: LogWindow | None = None,
) -> None:
    """Write ``folder/training_state/`` (``folder`` is a checkpoint being built under a temporary name)."""
    target = folder / STATE_DIR
    target.mkdir(parents=True, exist_ok=True)
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "micro_batches": micro_batches,
        "epoch": epoch,
        "num_processes": len(rng),
        "seconds": seconds,
        "run_config": dict(run_config),
        "log_window": (log_window or LogWindow()).to_json(),
    }
    _write_json(target / "state.json", state)
    optimizer_info, optimizer_tensors = split_state_dict(optimizer)
    save_file(optimizer_tensors, str(target / "optimizer.safetensors"))
    _write_json(target / "optimizer.json", optimizer_info)
    _write_json(target / "scheduler.json", {"scheduler": dict(scheduler), "scaler": scaler})
    rng_tensors = {
        f"p{rank}.{name}": t.contiguous() for rank, (_, ts) in enumerate(rng) for name, t in ts.items()
    }
    save_file(rng_tensors, str(target / "rng.safetensors"))
    _write_json(target / "rng.json", {"processes": [info for info, _ in rng]})
    lines = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write_text(target / "metrics.jsonl", lines)


def read_training_state(folder: Path) -> SavedState:
    """Read ``folder/training_state/`` back; a damaged or foreign folder is an InputError."""
    source = folder / STATE_DIR
    try:
        state = json.loads((source / "state.json").read_text(encoding="utf-8"))
        if state.get("format") != STATE_FORMAT:
            raise InputError(
                f"checkpoint {folder} has training-state format {state.get('format')}",
                f"this radlens reads format {STATE_FORMAT}; resume with the version that wrote it",
            )
        optimizer = join_state_dict(
            json.loads((source / "optimizer.json").read_text(encoding="utf-8")),
            load_file(str(source / "optimizer.safetensors")),
        )
        schedule = json.loads((source / "scheduler.json").read_text(encoding="utf-8"))
        rng_info = json.loads((source / "rng.json").read_text(encoding="utf-8"))["processes"]
        rng_tensors = load_file(str(source / "rng.safetensors"))
        records = [
            json.loads(line)
            for line in (source / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        log_window = LogWindow.from_json(state.get("log_window"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"checkpoint {folder} has a damaged training state ({exc.__class__.__name__})",
            "resume from an earlier checkpoint: delete this folder",
        ) from exc
    rng = []
    for rank, info in enumerate(rng_info):
        prefix = f"p{rank}."
        rng.append((info, {k[len(prefix) :]: t for k, t in rng_tensors.items() if k.startswith(prefix)}))
    return SavedState(
        folder=folder,
        step=int(state["step"]),
        micro_batches=int(state["micro_batches"]),
        num_processes=int(state["num_processes"]),
        run_config=state["run_config"],
        seconds=float(state["seconds"]),
        optimizer=optimizer,
        scheduler=schedule["scheduler"],
        scaler=schedule["scaler"],
        rng=rng,
        records=records,
        log_window=log_window,
    )


def config_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """The first run-config value that differs (``"train.lr: 0.001 now, 0.0002 in the checkpoint"``),
    ignoring :data:`RESUMABLE_CHANGES`; ``None`` when the configs agree.

    An option the checkpoint predates matches only when it is unset now (``None``, e.g. a new
    ``reports_root``) or at the value its absence means
    (:data:`radlens.models.checkpoint.LEGACY_VALUES`, e.g. ``image_normalization: imagenet`` for a
    radlens 0.1 run): that is how the run was made. One set to another value (say a new default) differs.
    """
    old, new = _flatten(saved), _flatten(current)
    for key in sorted(set(old) | set(new)):
        name = key.rsplit(".", 1)[-1]
        if name in RESUMABLE_CHANGES:
            continue
        legacy = LEGACY_VALUES.get(name, _NO_LEGACY)
        if key not in old and (new[key] is None or new[key] == legacy):
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            if key not in old and legacy is not _NO_LEGACY:
                return (
                    f"{key}: {new[key]!r} now; the checkpoint predates this option, which means {legacy!r} "
                    "for it"
                )
            return f"{key}: {new.get(key, '<unset>')!r} now, {old.get(key, '<unset>')!r} in the checkpoint"
    return None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): list(value) if isinstance(value, tuple) else value}


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def saved_run_config(out_dir: Path) -> dict[str, Any] | None:
    """The run config recorded in the latest checkpoint of ``out_dir`` (``None`` without checkpoints)."""
    found = list_checkpoints(out_dir)
    if not found:
        return None
    try:
        state = json.loads((found[-1][1] / STATE_DIR / "state.json").read_text(encoding="utf-8"))
        return dict(state["run_config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"checkpoint {found[-1][1]} has a damaged training state ({exc.__class__.__name__})",
            "resume from an earlier checkpoint: delete this folder",
        ) from exc

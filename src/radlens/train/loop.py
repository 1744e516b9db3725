"""The generic training loop (Hugging Face Accelerate): any model with ``loss(batch)``, any dataset.

One process by default; the same code runs under ``accelerate launch`` on several processes or GPUs
(each process takes its own shard of every global batch). Per optimiser step: ``grad_accum``
micro-batches under ``accelerator.accumulate``, gradient clipping, AdamW, then the warm-up + cosine
schedule (stepped here, once per optimiser step, not per process as Accelerate's wrapper would).

Data order is a pure function of the seed and the position: :class:`StepSampler` yields an endless
stream of batches, epoch ``e`` being the permutation ``default_rng([seed, e])`` of the dataset, so a
resumed run starts the stream at ``step * grad_accum`` micro-batches and sees exactly the batches the
uninterrupted run would have seen. Together with the saved optimiser, scheduler and RNG states
(:mod:`radlens.train.state`) this makes ``resume`` reproduce the uninterrupted loss curve exactly on CPU.

Outputs in ``out_dir``: ``config.yaml`` + ``versions.json`` (the run config), ``metrics.jsonl`` (a row
every ``log_every`` steps), ``checkpoint-STEP/`` every ``checkpoint_every`` steps and at the end (the
last ``keep_checkpoints`` are kept), and when training completes the final model at the root
(``config.json`` + ``model.safetensors``, loadable with ``load_checkpoint(out_dir)``) and
``loss_curve.png``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import GradientAccumulationPlugin, gather_object, send_to_device, set_seed
from pydantic import Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from radlens.core import (
    Config,
    InputError,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_text,
    is_quiet,
    write_run_metadata,
)
from radlens.core.progress import stderr_console
from radlens.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint, save_checkpoint
from radlens.train.schedule import build_optimizer, build_scheduler
from radlens.train.state import (
    LogWindow,
    SavedState,
    capture_rng,
    checkpoint_dir,
    config_difference,
    list_checkpoints,
    read_training_state,
    restore_rng,
    write_training_state,
)

METRICS_NAME = "metrics.jsonl"
CURVE_NAME = "loss_curve.png"
#: An Adam moving-average coefficient: torch accepts [0, 1).
AdamBeta = Annotated[float, Field(ge=0.0, lt=1.0)]


class TrainConfig(Config):
    """Optimisation and bookkeeping of one training run (the model's own config lives beside it).

    ``max_steps`` counts optimiser steps; one step sees ``batch_size × grad_accum × processes`` samples.
    ``checkpoint_every`` 0 saves only at the end. ``mixed_precision`` ``fp16`` needs a CUDA GPU; ``bf16``
    runs on recent GPUs and CPUs. ``log_with: tensorboard`` needs the ``tensorboard`` package.
    ``adam_betas`` are each in [0, 1).
    """

    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    adam_betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0.0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = Field(42, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    log_with: Literal["none", "tensorboard"] = "none"


# --- data order ---------------------------------------------------------------------------------------


class StepSampler(Sampler[list[tuple[int, int]]]):
    """An endless stream of batches of ``(epoch, index)``; micro-batch ``m`` is the same in every run.

    Epoch ``e`` is ``numpy.random.default_rng([seed, e]).permutation(size)`` cut into global batches of
    ``batch_size × num_processes`` (the incomplete tail is dropped); process ``p`` takes the ``p``-th
    slice of each. ``start`` skips that many micro-batches without touching the data.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        start: int = 0,
        num_processes: int = 1,
        process_index: int = 0,
    ) -> None:
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.num_processes, self.process_index = num_processes, process_index
        global_batch = batch_size * num_processes
        if size < global_batch:
            raise InputError(
                f"{size} training items, fewer than one batch of {global_batch}",
                "lower batch_size or add training data",
            )
        self.batches_per_epoch = size // global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        """The item order of ``epoch``."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro, epoch, order = self.start, -1, np.empty(0, dtype=np.int64)
        while True:
            current, position = divmod(micro, self.batches_per_epoch)
            if current != epoch:
                epoch, order = current, self.permutation(current)
            begin = (position * self.num_processes + self.process_index) * self.batch_size
            yield [(epoch, int(index)) for index in order[begin : begin + self.batch_size]]
            micro += 1


class _EpochIndexed(Dataset[Any]):
    """Items addressed by ``(epoch, index)``: sets the dataset's epoch (augmentation draw) per item,
    which works in DataLoader workers too, where a ``set_epoch`` call in the main process would not reach."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        return self.dataset[index]


class _LossModule(nn.Module):
    """``forward(batch)`` = ``model.loss(batch)`` as a dict: Accelerate (DDP, autocast) wraps ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        loss_fn: Callable[[Any], torch.Tensor | dict[str, torch.Tensor]] = self.model.loss  # type: ignore[assignment]
        out = loss_fn(batch)
        parts = {"loss": out} if isinstance(out, torch.Tensor) else dict(out)
        if "loss" not in parts:
            raise TypeError(f"{type(self.model).__name__}.loss must return a tensor or a dict with 'loss'")
        return parts


# --- the loop -----------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did: the final step, every log row, where it resumed from."""

    out_dir: Path
    step: int
    records: list[dict[str, Any]]
    resumed_from: int | None
    seconds: float


class Trainer:
    """Train ``model`` (exposing ``loss(batch) -> Tensor | dict[str, Tensor]`` with a ``"loss"`` key) on
    ``train_data`` and write checkpoints and logs to ``out_dir``.

    ``save_model`` is the registered radlens model written to checkpoints (default ``model``): pass it
    when ``model`` is a training wrapper around it sharing its parameters. ``run_config`` is the full
    resolved config written to ``config.yaml`` and compared on resume (default ``config``).
    ``checkpoint_extra`` (JSON) is added to every checkpoint's ``extra`` beside ``step``.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset[Any],
        config: TrainConfig,
        out_dir: str | os.PathLike[str],
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        run_config: Config | None = None,
        save_model: nn.Module | None = None,
        checkpoint_extra: Mapping[str, Any] | None = None,
        description: str = "training",
    ) -> None:
        self.model, self.train_data, self.config = model, train_data, config
        self.out_dir = Path(out_dir)
        self.collate_fn = collate_fn
        self.run_config = run_config if run_config is not None else config
        self.save_model = save_model if save_model is not None else model
        if getattr(type(self.save_model), "model_type", None) is None:
            raise TypeError(
                f"{type(self.save_model).__name__} is not a registered radlens model: pass save_model, the "
                "registered model it trains (radlens.models.checkpoint.register_model)"
            )
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.description = description

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``max_steps``; with ``resume``, continue from the latest checkpoint in ``out_dir``."""
        _check_logger(self.config.log_with)
        accelerator = Accelerator(
            mixed_precision=_mixed_precision(self.config.mixed_precision),
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=self.config.grad_accum, sync_with_dataloader=False
            ),
            log_with=None if self.config.log_with == "none" else self.config.log_with,
            project_dir=str(self.out_dir),
            step_scheduler_with_optimizer=False,
        )
        try:
            return self._fit(accelerator, resume)
        finally:
            if self.config.log_with != "none":
                accelerator.end_training()
            if accelerator.num_processes == 1:
                # Accelerate keeps its state in a process-wide singleton that refuses a second run with
                # another mixed-precision setting; a single-process run owns nothing worth keeping.
                AcceleratorState._reset_state()

    def _fit(self, accelerator: Accelerator, resume: bool) -> TrainResult:
        config, out = self.config, self.out_dir
        saved = self._resume_state(accelerator.num_processes) if resume else None
        step = saved.step if saved is not None else 0
        sampler = StepSampler(
            len(self.train_data),  # type: ignore[arg-type]
            config.batch_size,
            config.seed,
            start=step * config.grad_accum,
            num_processes=accelerator.num_processes,
            process_index=accelerator.process_index,
        )
        if saved is None:
            if list_checkpoints(out):
                raise InputError(
                    f"{out} already holds checkpoints", "pass --resume, or --overwrite to restart"
                )
            set_seed(config.seed)
            if accelerator.is_main_process:
                out.mkdir(parents=True, exist_ok=True)
                write_run_metadata(out, self.run_config)
        module = _LossModule(self.model)
        optimizer = build_optimizer(
            module, config.lr, config.weight_decay, config.adam_betas, config.adam_eps
        )
        scheduler = build_scheduler(optimizer, config.warmup_steps, config.max_steps)
        if saved is not None:
            optimizer.load_state_dict(saved.optimizer)
            scheduler.load_state_dict(saved.scheduler)
        module, optimizer = accelerator.prepare(module, optimizer)
        if saved is not None and saved.scaler is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(saved.scaler)
        loader = DataLoader(
            _EpochIndexed(self.train_data),
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
            pin_memory=accelerator.device.type == "cuda",
        )
        if saved is not None:
            restore_rng(*saved.rng[accelerator.process_index])
        records = list(saved.records) if saved is not None else []
        log = _Log(out / METRICS_NAME, records, accelerator)
        if config.log_with != "none":
            accelerator.init_trackers("radlens")
        run = _Run(self, accelerator, module, optimizer, scheduler, sampler, log, step, saved)
        with _progress(accelerator, self.description, config.max_steps, step) as bar:
            run.train(iter(loader), bar)
        if accelerator.is_main_process:
            extra = {**self.checkpoint_extra, "step": run.step, "train_loss": log.last_loss()}
            _write_root_model(self.save_model, out, extra)
            _write_loss_curve(out / CURVE_NAME, log.records)
        accelerator.wait_for_everyone()
        return TrainResult(
            out_dir=out,
            step=run.step,
            records=log.records,
            resumed_from=saved.step if saved is not None else None,
            seconds=run.seconds(),
        )

    def _resume_state(self, num_processes: int) -> SavedState:
        found = list_checkpoints(self.out_dir)
        if not found:
            raise InputError(
                f"no checkpoint to resume in {self.out_dir}", "start without --resume (or check --out)"
            )
        saved = read_training_state(found[-1][1])
        difference = config_difference(saved.run_config, self.run_config.model_dump(mode="json"))
        if difference is not None:
            raise InputError(
                f"cannot resume with a different config ({difference})",
                "resume with the options of the interrupted run, or start a new run",
            )
        if saved.num_processes != num_processes:
            raise InputError(
                f"checkpoint {saved.folder} was written by {saved.num_processes} processes, this run has "
                f"{num_processes}",
                "resume with the same number of processes (the data order depends on it)",
            )
        weights = load_checkpoint(saved.folder, expected_type=getattr(self.save_model, "model_type", None))
        self.save_model.load_state_dict(weights.state_dict(), strict=True)
        return saved


class _Run:
    """The state of one ``fit`` call while it steps (kept off :class:`Trainer` so ``fit`` can be rerun)."""

    def __init__(
        self,
        trainer: Trainer,
        accelerator: Accelerator,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        sampler: StepSampler,
        log: _Log,
        step: int,
        saved: SavedState | None,
    ) -> None:
        self.trainer, self.config = trainer, trainer.config
        self.accelerator, self.module, self.optimizer, self.scheduler = (
            accelerator,
            module,
            optimizer,
            scheduler,
        )
        self.sampler, self.log, self.step = sampler, log, step
        self.previous_seconds = saved.seconds if saved is not None else 0.0
        self.started = time.perf_counter()
        # The log window: per-value sums over the steps since the last row (restored on resume, so the
        # next row averages the same steps as in the uninterrupted run).
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_steps, self.window_start = 0, self.started
        window = saved.log_window if saved is not None else LogWindow()
        if window.steps and accelerator.process_index < len(window.sums):
            device = accelerator.device
            self.pending = {
                name: torch.tensor(total, dtype=torch.float32, device=device)
                for name, total in window.sums[accelerator.process_index].items()
            }
            self.pending_steps, self.window_start = window.steps, self.started - window.seconds

    def seconds(self) -> float:
        return self.previous_seconds + time.perf_counter() - self.started

    def train(self, batches: Iterator[Any], bar: Callable[[int, float], None]) -> None:
        config, accelerator, module = self.config, self.accelerator, self.module
        module.train()
        grad_norm: torch.Tensor | None = None
        try:
            while self.step < config.max_steps:
                lr = float(self.scheduler.get_last_lr()[0])
                for _ in range(config.grad_accum):
                    batch = send_to_device(next(batches), accelerator.device)
                    with accelerator.accumulate(module):
                        parts = module(batch)
                        accelerator.backward(parts["loss"])
                        if accelerator.sync_gradients and config.max_grad_norm is not None:
                            grad_norm = accelerator.clip_grad_norm_(module.parameters(), config.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    pending = self.pending  # the window's sums (saved in checkpoints)
                    for name, value in parts.items():
                        value = value.detach().float() / config.grad_accum
                        pending[name] = pending[name] + value if name in pending else value
                if not accelerator.optimizer_step_was_skipped:
                    self.scheduler.step()
                self.step += 1
                self.pending_steps += 1
                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    now = time.perf_counter()  # logging costs are counted in the next window
                    row = self._row(self.pending, self.pending_steps, lr, grad_norm, now - self.window_start)
                    self.log.append(row)
                    bar(self.step, row["loss"])
                    self.pending, self.pending_steps, self.window_start = {}, 0, now
                every = config.checkpoint_every
                if self.step == config.max_steps or (every and self.step % every == 0):
                    self._save_checkpoint()
        finally:
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _row(
        self,
        pending: dict[str, torch.Tensor],
        steps: int,
        lr: float,
        grad_norm: torch.Tensor | None,
        elapsed: float,
    ) -> dict[str, Any]:
        names = list(pending)
        values = torch.stack([pending[name] for name in names]) / steps
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        samples = self.config.batch_size * self.config.grad_accum * self.accelerator.num_processes * steps
        micro = self.step * self.config.grad_accum
        row: dict[str, Any] = {"step": self.step, "epoch": round(micro / self.sampler.batches_per_epoch, 4)}
        row.update({name: float(value) for name, value in zip(names, values.tolist(), strict=True)})
        row["lr"] = lr
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        row["seconds"] = elapsed / steps
        row["samples_per_s"] = samples / elapsed if elapsed > 0 else 0.0
        return row

    def _save_checkpoint(self) -> None:
        accelerator = self.accelerator
        rng = gather_object([capture_rng()])
        sums = gather_object([{name: float(value) for name, value in self.pending.items()}])
        window = LogWindow(self.pending_steps, time.perf_counter() - self.window_start, sums)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            out = self.trainer.out_dir
            model = self.trainer.save_model
            with atomic_directory(checkpoint_dir(out, self.step), overwrite=True) as tmp:
                extra = {**self.trainer.checkpoint_extra, "step": self.step}
                save_checkpoint(model, tmp, extra=extra, overwrite=True)
                scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                write_training_state(
                    tmp,
                    step=self.step,
                    micro_batches=self.step * self.config.grad_accum,
                    epoch=self.step * self.config.grad_accum / self.sampler.batches_per_epoch,
                    run_config=self.trainer.run_config.model_dump(mode="json"),
                    seconds=self.seconds(),
                    optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    scaler=scaler,
                    rng=rng,
                    records=self.log.records,
                    log_window=window if self.pending_steps else None,
                )
            for _, old in list_checkpoints(out)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()


# --- logs and outputs -----------------------------------------------------------------------------------


class _Log:
    """``metrics.jsonl``: rewritten from the checkpoint's copy on resume, then appended row by row."""

    def __init__(self, path: Path, records: list[dict[str, Any]], accelerator: Accelerator) -> None:
        self.path, self.records, self.accelerator = path, records, accelerator
        if accelerator.is_main_process:
            atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))

    def append(self, row: dict[str, Any]) -> None:
        self.records.append(row)
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def last_loss(self) -> float | None:
        return float(self.records[-1]["loss"]) if self.records else None


@contextlib.contextmanager
def _progress(
    accelerator: Accelerator, description: str, total: int, done: int
) -> Iterator[Callable[[int, float], None]]:
    """A rich bar with the latest loss (none when quiet or on processes other than the first)."""
    if is_quiet() or not accelerator.is_main_process:
        yield lambda step, loss: None
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr_console) as bar:
        task = bar.add_task(description, total=total, completed=done, loss="-")
        yield lambda step, loss: bar.update(task, completed=step, loss=f"{loss:.4f}")


def _write_root_model(model: nn.Module, out: Path, extra: dict[str, Any]) -> None:
    """The final model as ``out/config.json`` + ``out/model.safetensors``.

    ``save_checkpoint`` writes a whole folder atomically, but the run folder holds more than the model:
    the model is written to a hidden folder and its two files moved in, the config last (a checkpoint
    without ``config.json`` is not loaded, so no reader sees new weights with an old config).
    """
    staging = out / ".final-model"
    save_checkpoint(model, staging, extra=extra, overwrite=True)
    os.replace(staging / WEIGHTS_NAME, out / WEIGHTS_NAME)
    os.replace(staging / CONFIG_NAME, out / CONFIG_NAME)
    shutil.rmtree(staging, ignore_errors=True)


def _write_loss_curve(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Plot every logged ``*loss*`` column against the step (matplotlib's Agg canvas, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [record["step"] for record in records]
    names = [name for name in (records[0] if records else {}) if "loss" in name]
    for name in names:
        axes.plot(steps, [record.get(name, np.nan) for record in records], label=name, linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    if len(names) > 1:
        axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def _check_logger(log_with: str) -> None:
    if log_with == "tensorboard" and not (
        importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    ):
        raise InputError(
            "log_with: tensorboard needs the tensorboard package, which is not installed",
            "pip install tensorboard, or set log_with: none (metrics.jsonl is always written)",
        )


def _mixed_precision(value: str) -> str:
    if value == "fp16" and not torch.cuda.is_available():
        raise InputError("mixed_precision fp16 needs a CUDA GPU", "use bf16 or no on this machine")
    return value

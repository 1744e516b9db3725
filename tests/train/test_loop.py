"""The generic loop: exact resume, schedule shape, gradient accumulation, data order, bad input."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from radlens.core import Config, InputError
from radlens.models.checkpoint import load_checkpoint, register_model
from radlens.train.loop import StepSampler, TrainConfig, Trainer
from radlens.train.schedule import build_scheduler
from radlens.train.state import config_difference, list_checkpoints


class NetConfig(Config):
    width: int = 8
    dropout: float = 0.2


@register_model("test_train_net")
class Net(nn.Module):
    """Linear-dropout-linear regression; the loss also draws from Python's and NumPy's RNGs, so a
    resume that forgot any RNG stream would log different losses."""

    config_class = NetConfig

    def __init__(self, config: NetConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.body = nn.Sequential(nn.Linear(4, config.width), nn.Tanh(), nn.Dropout(config.dropout))
        self.head = nn.Linear(config.width, 1)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        prediction = self.head(self.body(batch["x"])).squeeze(-1)
        mse = ((prediction - batch["y"]) ** 2).mean()
        jitter = 1e-3 * random.random() * float(np.random.rand())
        return {"loss": mse + jitter, "mse": mse.detach()}


class Points(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 40, crash_after: int | None = None) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=generator)
        self.crash_after, self.fetched = crash_after, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self.fetched += 1
        if self.crash_after is not None and self.fetched > self.crash_after:
            raise KilledError
        return {"x": self.x[index], "y": self.y[index]}


class KilledError(Exception):
    """Stands for the process being killed mid-run."""


def _config(**changes: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "lr": 0.05,
        "weight_decay": 0.01,
        "warmup_steps": 3,
        "max_steps": 10,
        "batch_size": 4,
        "grad_accum": 2,
        "checkpoint_every": 4,
        "seed": 7,
    }
    values.update(changes)
    return TrainConfig.model_validate(values)


def _fit(out: Path, data: Dataset[Any], config: TrainConfig, resume: bool = False) -> Any:
    torch.manual_seed(0)
    return Trainer(Net(NetConfig()), data, config, out).fit(resume=resume)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder).state_dict()


def _cosine_reference(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("loop") / "full"
    return out, _fit(out, Points(), _config())


@pytest.mark.parametrize(
    "changes",
    [{}, {"log_every": 3}],
    ids=["log-every-step", "log-window-open-at-the-checkpoint"],
)
def test_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, uninterrupted: tuple[Path, Any], changes: dict[str, Any]
) -> None:
    """With ``log_every`` 3 and ``checkpoint_every`` 4, checkpoint-4 is saved with step 4 in the open log
    window: the resumed row of step 6 must still average steps 4-6, as the uninterrupted run's does."""
    config = _config(**changes)
    if changes:
        full_dir = tmp_path / "full"
        full = _fit(full_dir, Points(), config)
    else:
        full_dir, full = uninterrupted
    logged = [step for step in range(1, 11) if step % config.log_every == 0 or step == 10]
    out = tmp_path / "killed"
    # Killed during step 7 (each step fetches 2 micro-batches of 4 items): checkpoint-4 is the last one.
    with pytest.raises(KilledError):
        _fit(out, Points(crash_after=6 * 8 + 3), config)
    assert [step for step, _ in list_checkpoints(out)] == [4]
    rows_before_kill = [step for step in logged if step <= 6]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(rows_before_kill)
    resumed = _fit(out, Points(), config, resume=True)
    assert resumed.resumed_from == 4
    assert [row["step"] for row in full.records] == [row["step"] for row in resumed.records] == logged
    timing = {"seconds", "samples_per_s"}
    for expected_row, got_row in zip(full.records, resumed.records, strict=True):
        assert set(got_row) == set(expected_row)
        for name in sorted(set(expected_row) - timing):
            where = (got_row["step"], name)
            assert got_row[name] == pytest.approx(expected_row[name], rel=0, abs=1e-6), where
    assert len({row["loss"] for row in full.records}) == len(logged)  # the run really changed the model
    final_full, final_resumed = _weights(full_dir), _weights(out)
    for name, tensor in final_full.items():
        torch.testing.assert_close(final_resumed[name], tensor, rtol=0, atol=1e-6)
    on_disk = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["loss"] for row in on_disk] == [row["loss"] for row in resumed.records]


def test_checkpoint_without_a_saved_log_window_still_resumes(tmp_path: Path) -> None:
    """A checkpoint written before log windows were saved resumes with an empty window: the first row
    after the resume averages only the steps run since."""
    config = _config(log_every=3)
    out = tmp_path / "old"
    with pytest.raises(KilledError):
        _fit(out, Points(crash_after=6 * 8 + 3), config)
    state_file = out / "checkpoint-4" / "training_state" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["log_window"]["steps"] == 1 and len(state["log_window"]["sums"]) == 1
    del state["log_window"]
    state_file.write_text(json.dumps(state))
    resumed = _fit(out, Points(), config, resume=True)
    assert [row["step"] for row in resumed.records] == [3, 6, 9, 10]
    full = _fit(tmp_path / "full", Points(), config)
    assert resumed.records[1]["loss"] != pytest.approx(full.records[1]["loss"], rel=0, abs=1e-6)
    assert resumed.records[2]["loss"] == pytest.approx(full.records[2]["loss"], rel=0, abs=1e-6)


def test_resume_without_the_rng_state_would_differ(
    tmp_path: Path, uninterrupted: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guard for the test above: it notices a resume that loses the RNG streams (dropout masks)."""
    _, full = uninterrupted
    out = tmp_path / "no-rng"
    with pytest.raises(KilledError):
        _fit(out, Points(crash_after=6 * 8 + 3), _config())
    monkeypatch.setattr("radlens.train.loop.restore_rng", lambda info, tensors: None)
    resumed = _fit(out, Points(), _config(), resume=True)
    assert [row["loss"] for row in resumed.records[:4]] == [row["loss"] for row in full.records[:4]]
    assert not np.allclose(
        [row["loss"] for row in resumed.records[4:]], [row["loss"] for row in full.records[4:]]
    )


def test_damaged_training_state_is_an_input_error(tmp_path: Path) -> None:
    out = tmp_path / "damaged"
    with pytest.raises(KilledError):
        _fit(out, Points(crash_after=6 * 8 + 3), _config())
    (out / "checkpoint-4" / "training_state" / "optimizer.safetensors").unlink()
    with pytest.raises(InputError, match="damaged training state"):
        _fit(out, Points(), _config(), resume=True)


def test_logged_lr_follows_warmup_then_cosine_to_zero(uninterrupted: tuple[Path, Any]) -> None:
    _, full = uninterrupted
    lrs = [row["lr"] for row in full.records]  # lr used by steps 1..10 = schedule at 0..9
    expected = [0.05 * _cosine_reference(step, 3, 10) for step in range(10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-9, atol=1e-12)


def test_scheduler_shape_against_reference() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = build_scheduler(optimizer, warmup_steps=20, max_steps=100)
    lrs = []
    for _ in range(101):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    reference = [2.0 * _cosine_reference(step, 20, 100) for step in range(101)]
    np.testing.assert_allclose(lrs, reference, rtol=1e-9, atol=1e-12)
    assert lrs[0] == 0.0 and lrs[20] == pytest.approx(2.0) and lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a < b for a, b in itertools.pairwise(lrs[:21]))  # linear warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(lrs[20:]))  # cosine decays


def test_gradient_accumulation_equals_one_big_batch(tmp_path: Path) -> None:
    def one_step(batch_size: int, grad_accum: int) -> dict[str, torch.Tensor]:
        config = _config(
            batch_size=batch_size, grad_accum=grad_accum, max_steps=1, warmup_steps=0, max_grad_norm=None
        )
        torch.manual_seed(3)
        model = Net(NetConfig(dropout=0.0))
        Trainer(model, Points(), config, tmp_path / f"b{batch_size}x{grad_accum}").fit()
        return {name: tensor.clone() for name, tensor in model.state_dict().items()}

    torch.manual_seed(3)
    initial = Net(NetConfig(dropout=0.0)).state_dict()
    accumulated, big = one_step(2, 4), one_step(8, 1)
    for name, tensor in big.items():
        torch.testing.assert_close(accumulated[name], tensor, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(tensor, initial[name])  # the step did move the weights


def test_step_sampler_shards_and_skips() -> None:
    full = StepSampler(10, batch_size=2, seed=5, num_processes=2, process_index=0)
    other = StepSampler(10, batch_size=2, seed=5, num_processes=2, process_index=1)
    first, second = iter(full), iter(other)
    seen = []
    for _ in range(full.batches_per_epoch):  # one epoch: 2 global batches of 4, 2 items left over
        a, b = next(first), next(second)
        assert not {i for _, i in a} & {i for _, i in b}
        seen += [i for _, i in a + b]
    assert len(set(seen)) == 8 and next(first)[0][0] == 1  # the next batch starts epoch 1
    single = iter(StepSampler(10, batch_size=3, seed=5))
    stream = [next(single) for _ in range(7)]
    skipped = iter(StepSampler(10, batch_size=3, seed=5, start=4))
    assert [next(skipped) for _ in range(3)] == stream[4:]
    assert stream[0] != stream[3]  # epochs are reshuffled


def test_outputs_of_a_run(uninterrupted: tuple[Path, Any]) -> None:
    out, full = uninterrupted
    assert [step for step, _ in list_checkpoints(out)] == [8, 10]  # keep_checkpoints = 2
    assert (out / "config.yaml").is_file() and (out / "versions.json").is_file()
    with Image.open(out / "loss_curve.png") as image:
        assert image.size[0] > 100
    model = load_checkpoint(out)
    torch.testing.assert_close(
        model.state_dict()["head.weight"], _weights(out / "checkpoint-10")["head.weight"]
    )
    row = full.records[-1]
    assert row["samples_per_s"] > 0 and row["seconds"] > 0 and row["epoch"] == pytest.approx(10 * 2 / 10)


def test_resume_errors(tmp_path: Path, uninterrupted: tuple[Path, Any]) -> None:
    with pytest.raises(InputError, match="no checkpoint to resume"):
        _fit(tmp_path / "empty", Points(), _config(), resume=True)
    out, _ = uninterrupted
    with pytest.raises(InputError, match=r"different config \(lr"):
        _fit(out, Points(), _config(lr=0.1), resume=True)
    with pytest.raises(InputError, match="already holds checkpoints"):
        _fit(out, Points(), _config())


def test_tensorboard_requested_but_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if "tensorboard" in name.lower() else real(name, *a),
    )
    with pytest.raises(InputError, match="tensorboard package"):
        _fit(tmp_path / "tb", Points(), _config(log_with="tensorboard"))
    assert not (tmp_path / "tb").exists()


def test_too_little_data_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fewer than one batch"):
        _fit(tmp_path / "small", Points(n=3), _config())
    assert not (tmp_path / "small").exists()  # refused before writing anything


def test_a_field_the_checkpoint_predates_matches_at_its_legacy_value() -> None:
    """radlens 0.1 wrote no image_normalization, meaning ImageNet statistics: a resume at that value
    matches; at another one it is refused, saying what the checkpoint's absence means."""
    saved = {"model": {"arch": "efficientnet"}}
    assert (
        config_difference(saved, {"model": {"arch": "efficientnet", "image_normalization": "imagenet"}})
        is None
    )
    difference = config_difference(
        saved, {"model": {"arch": "efficientnet", "image_normalization": "inception"}}
    )
    assert difference == (
        "model.image_normalization: 'inception' now; the checkpoint predates this option, which means 'imagenet' "
        "for it"
    )

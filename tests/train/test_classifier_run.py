"""``radlens train classifier``: seeded initial weights, and an --overwrite that checks inputs first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import write_yaml

from radlens.cli import main
from radlens.models.checkpoint import load_checkpoint
from radlens.train.classifier import build_run_config, train_classifier

#: A VGG of two 4/8-channel stages at 32 px: one step takes milliseconds.
TINY_CLASSIFIER: dict[str, Any] = {
    "model": {"image_size": 32, "vgg_widths": [4, 8], "vgg_convs_per_stage": 1},
    "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0, "log_every": 1, "seed": 3},
}


def _classifier(*args: str) -> int:
    return main(["-q", "train", "classifier", "--arch", "vgg", *args])


def test_the_seed_fixes_the_initial_weights(tmp_path: Path, phantom: Path) -> None:
    """Two runs with one train.seed start from the same weights (so log the same step-1 loss and end
    equal); another seed starts elsewhere."""
    torch.manual_seed(123)  # the global RNG differs before each run: only train.seed may decide
    first = train_classifier(build_run_config(phantom, "cpu-demo", "vgg", TINY_CLASSIFIER), tmp_path / "a")
    torch.rand(17)
    second = train_classifier(build_run_config(phantom, "cpu-demo", "vgg", TINY_CLASSIFIER), tmp_path / "b")
    assert first.train.records[0]["loss"] == second.train.records[0]["loss"]
    weights_a, weights_b = (
        load_checkpoint(tmp_path / "a").state_dict(),
        load_checkpoint(tmp_path / "b").state_dict(),
    )
    for name, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[name], tensor, rtol=0, atol=0)
    other_seed = {**TINY_CLASSIFIER, "train": {**TINY_CLASSIFIER["train"], "seed": 4}}
    third = train_classifier(build_run_config(phantom, "cpu-demo", "vgg", other_seed), tmp_path / "c")
    assert third.train.records[0]["loss"] != first.train.records[0]["loss"]


def _old_run(folder: Path) -> dict[str, str]:
    """A stand-in for a finished run: a few files --overwrite would replace."""
    files = {
        "config.yaml": "old: run\n",
        "versions.json": "{}\n",
        "metrics.jsonl": json.dumps({"step": 1, "loss": 0.5}) + "\n",
    }
    (folder / "checkpoint-1").mkdir(parents=True)
    (folder / "checkpoint-1" / "model.safetensors").write_text("weights")
    for name, text in files.items():
        (folder / name).write_text(text)
    return _contents(folder)


def _contents(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): path.read_text()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--split", "bogus"], "unknown split(s) bogus"),
        (["--batch-size", "64"], "fewer than one batch of 64"),
    ],
    ids=["unknown-split", "batch-larger-than-the-split"],
)
def test_overwrite_keeps_the_old_run_when_the_inputs_are_bad(
    tmp_path: Path, phantom: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    out = tmp_path / "run"
    before = _old_run(out)
    config = write_yaml(tmp_path / "tiny.yaml", TINY_CLASSIFIER)
    capsys.readouterr()
    code = _classifier(
        "--data", str(phantom), "--out", str(out), "--config", str(config), *options, "--overwrite"
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err, err
    assert _contents(out) == before
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no leftovers


def test_overwrite_replaces_the_old_run_once_the_inputs_are_good(tmp_path: Path, phantom: Path) -> None:
    out = tmp_path / "run"
    _old_run(out)
    config = write_yaml(tmp_path / "tiny.yaml", TINY_CLASSIFIER)
    assert _classifier("--data", str(phantom), "--out", str(out), "--config", str(config), "--overwrite") == 0
    assert not (out / "checkpoint-1").exists() and (out / "checkpoint-2").is_dir()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "eval.json").is_file()


def test_overwrite_never_deletes_the_data(
    tmp_path: Path, phantom: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "runs" / "data"
    shutil.copytree(phantom, data)
    before = sorted(data.rglob("*"))
    config = write_yaml(tmp_path / "tiny.yaml", TINY_CLASSIFIER)
    for out, relation in ((data, "is"), (data.parent, "holds")):
        capsys.readouterr()
        assert (
            _classifier("--data", str(data), "--out", str(out), "--config", str(config), "--overwrite") == 2
        )
        assert f"{relation} the input {data}" in capsys.readouterr().err
    assert sorted(data.rglob("*")) == before

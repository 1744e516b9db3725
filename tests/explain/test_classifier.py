"""The CheXpert classifier: masked BCE policies, towers, checkpoints, training on RadPhantom, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from radlens.core import InputError
from radlens.data.schema import CHEXPERT_LABELS
from radlens.models.checkpoint import load_checkpoint, save_checkpoint
from radlens.models.classifier import CheXpertClassifier, ClassifierConfig, masked_bce

NAN = math.nan


def _bce(logit: float, target: float) -> float:
    return float(F.binary_cross_entropy_with_logits(torch.tensor(logit), torch.tensor(float(target))))


def test_masked_bce_follows_the_blank_and_uncertain_policies() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, -1.0, NAN]])
    known = [_bce(0.5, 1), _bce(-1.0, 0)]
    assert float(masked_bce(logits, labels)) == pytest.approx(sum(known) / 2)  # U-Ignore, blanks ignored
    ones = masked_bce(logits, labels, uncertain="positive")
    assert float(ones) == pytest.approx((sum(known) + _bce(2.0, 1)) / 3)
    zeros = masked_bce(logits, labels, uncertain="negative", blank="negative")
    assert float(zeros) == pytest.approx((sum(known) + _bce(2.0, 0) + _bce(0.0, 0)) / 4)
    # Nothing known: zero loss that still backpropagates (zero gradients).
    empty = torch.zeros(2, 3, requires_grad=True)
    loss = masked_bce(empty, torch.full((2, 3), NAN))
    loss.backward()
    assert float(loss.detach()) == 0.0 and empty.grad is not None and not empty.grad.any()
    with pytest.raises(InputError):
        masked_bce(logits, labels[:, :3])


def test_vgg_classifier_selects_labels_and_reads_grey_or_rgb() -> None:
    torch.manual_seed(0)
    labels = ("Pleural Effusion", "Cardiomegaly")
    model = CheXpertClassifier(
        ClassifierConfig(arch="vgg", image_size=32, vgg_widths=(4, 8), labels=labels)
    ).eval()
    grey = torch.rand(2, 1, 32, 32)
    assert model(grey).shape == (2, 2)
    torch.testing.assert_close(model(grey.expand(-1, 3, -1, -1)), model(grey))
    full = torch.arange(28, dtype=torch.float32).view(2, 14)
    picked = model.select_labels(full)
    assert picked[:, 0].tolist() == full[:, CHEXPERT_LABELS.index("Pleural Effusion")].tolist()
    assert picked[:, 1].tolist() == full[:, CHEXPERT_LABELS.index("Cardiomegaly")].tolist()
    batch = {"image": grey, "labels": torch.full((2, 14), NAN)}
    batch["labels"][:, CHEXPERT_LABELS.index("Cardiomegaly")] = torch.tensor([1.0, 0.0])
    expected = F.binary_cross_entropy_with_logits(model(grey)[:, 1], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(model.loss(batch), expected)
    with pytest.raises(InputError):
        model(torch.rand(2, 2, 32, 32))
    with pytest.raises(ValueError):
        ClassifierConfig(arch="vgg", pretrained=True)
    with pytest.raises(ValueError):
        ClassifierConfig(labels=("Pleural Effusion", "Nodule"))


def test_efficientnet_classifier_starts_from_imagenet_and_round_trips(tmp_path: Path) -> None:
    from radlens.models.image_towers import load_efficientnet_lite0_state_dict

    model = CheXpertClassifier(ClassifierConfig(image_size=64, trainable_stages=2)).eval()
    reference = load_efficientnet_lite0_state_dict()
    torch.testing.assert_close(model.tower.net.stem[0].weight, reference["stem.0.weight"])
    trainable = {
        name.split(".")[2] for name, p in model.named_parameters() if p.requires_grad and "net" in name
    }
    assert trainable == {"blocks", "head"}  # stem and early blocks frozen
    assert model.cam_layer == "tower.net.head"
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is CheXpertClassifier and loaded.config == model.config
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.phantom.spec import PhantomConfig
    from radlens.phantom.writer import generate_dataset

    out = tmp_path_factory.mktemp("classifier") / "phantom"
    generate_dataset(PhantomConfig(studies=40, size=64, seed=5, workers=1), out)
    return out


def _tiny_overrides(steps: int) -> dict[str, object]:
    return {
        "split": "all",
        "eval_split": "all",
        "model": {"image_size": 64, "vgg_widths": [8, 16]},
        "train": {"max_steps": steps, "batch_size": 8, "log_every": 1, "warmup_steps": 0, "lr": 3e-3},
    }


def test_training_lowers_the_loss_and_writes_a_scored_checkpoint(phantom: Path, tmp_path: Path) -> None:
    from radlens.train.classifier import build_run_config, train_classifier

    run = build_run_config(phantom, "cpu-demo", "vgg", _tiny_overrides(25))
    assert run.model.arch == "vgg" and run.model.vgg_convs_per_stage == 1  # from the preset
    summary = train_classifier(run, tmp_path / "run")
    losses = [row["loss"] for row in summary.train.records]
    assert len(losses) == 25 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    model = load_checkpoint(tmp_path / "run")
    assert isinstance(model, CheXpertClassifier)
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert evaluation["studies"] == 40 and set(evaluation["labels"]) == set(CHEXPERT_LABELS)
    effusion = evaluation["labels"]["Pleural Effusion"]
    assert effusion["known"] >= effusion["positive"] >= 1
    with pytest.raises(InputError, match="not empty"):
        train_classifier(run, tmp_path / "run")


def test_bad_presets_and_options_are_input_errors(phantom: Path) -> None:
    from radlens.train.classifier import build_run_config

    with pytest.raises(InputError, match="preset"):
        build_run_config(phantom, "fast", "vgg")
    with pytest.raises(InputError, match="max_steps"):
        build_run_config(phantom, "cpu-demo", "vgg", {"train": {"max_steps": 0}})


def test_train_classifier_command(phantom: Path, tmp_path: Path) -> None:
    from radlens.cli import classifier_cmd, train_cmd

    app = typer.Typer()
    train_cmd.register(app)
    classifier_cmd.register(app)
    args = [
        "train",
        "classifier",
        "--data",
        str(phantom),
        "--arch",
        "vgg",
        "--max-steps",
        "2",
        "--image-size",
        "64",
    ]
    args += ["--split", "all", "--eval-split", "all", "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained the vgg classifier (cpu-demo) for 2 steps" in result.output
    assert isinstance(load_checkpoint(tmp_path / "cli"), CheXpertClassifier)
    bad = CliRunner().invoke(app, [*args[:4], "--arch", "resnet", "--out", str(tmp_path / "bad")])
    assert isinstance(bad.exception, InputError) and "resnet" in str(bad.exception)

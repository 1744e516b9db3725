"""``radlens train retrieval|classifier``: bad options and paths fail before the training stack loads."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from cli_helpers import assert_fail_before_the_model_stack

from radlens.cli import classifier_cmd, train_cmd


def _layout(tmp_path: Path) -> tuple[str, str]:
    """A dataset folder, a non-empty folder (``busy``) and a file (``a-file``); returns the dataset
    folder and the file."""
    (tmp_path / "data").mkdir()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "old.txt").write_text("an earlier run")
    (tmp_path / "a-file").write_text("x")
    return str(tmp_path / "data"), str(tmp_path / "a-file")


def test_train_retrieval_checks_options_before_the_model_stack(tmp_path: Path) -> None:
    """``train retrieval --preset bogus`` and the like: one line, exit 2, no torch / transformers import
    (checked in a fresh interpreter), and no run folder made."""
    data, a_file = _layout(tmp_path)
    tmp = str(tmp_path)
    train = ["train", "retrieval", "--data", data, "--out", f"{tmp}/run"]  # a later --data / --out wins
    assert_fail_before_the_model_stack(
        [
            ([*train, "--preset", "bogus"], "unknown --preset 'bogus'"),
            ([*train, "--model", "duall"], "unknown --model 'duall'"),
            ([*train, "--negatives", "XX"], "unknown --negatives 'XX'"),
            ([*train, "--format", "dicom"], "unknown --format 'dicom'"),
            ([*train, "--max-steps", "0"], "--max-steps must be at least 1"),
            ([*train, "--data", f"{tmp}/nowhere"], f"dataset {tmp}/nowhere not found"),
            (["train", "retrieval", "--out", f"{tmp}/run"], "--data is required"),
            ([*train, "--out", a_file], f"output path {a_file} is a file"),
            ([*train, "--out", f"{tmp}/busy"], f"output folder {tmp}/busy is not empty"),
            ([*train, "--resume"], f"no checkpoint to resume in {tmp}/run"),
            ([*train, "--config", f"{tmp}/none.yaml"], f"config file {tmp}/none.yaml not found"),
            (
                [*train, "--model", "fusion", "--base", f"{tmp}/none"],
                f"checkpoint folder {tmp}/none not found",
            ),
            (
                [*train, "--cache-dir", f"{a_file}/c"],
                f"--cache-dir {a_file}/c: output path {a_file} is a file",
            ),
        ]
    )
    assert not (tmp_path / "run").exists()


def test_train_classifier_checks_options_before_the_model_stack(tmp_path: Path) -> None:
    data, a_file = _layout(tmp_path)
    tmp = str(tmp_path)
    train = ["train", "classifier", "--data", data, "--out", f"{tmp}/run"]
    assert_fail_before_the_model_stack(
        [
            ([*train, "--preset", "bogus"], "unknown --preset 'bogus'"),
            ([*train, "--arch", "resnet"], "unknown --arch 'resnet'"),
            ([*train, "--uncertain", "maybe"], "unknown --uncertain 'maybe'"),
            ([*train, "--max-steps", "0"], "--max-steps must be at least 1"),
            ([*train, "--batch-size", "0"], "--batch-size must be at least 1"),
            ([*train, "--lr", "0"], "--lr must be above 0"),
            ([*train, "--data", f"{tmp}/nowhere"], f"dataset folder {tmp}/nowhere not found"),
            ([*train, "--out", a_file], f"output path {a_file} is a file"),
            ([*train, "--out", f"{tmp}/busy"], f"output folder {tmp}/busy is not empty"),
            ([*train, "--resume"], f"no checkpoint to resume in {tmp}/run"),
            ([*train, "--config", f"{tmp}/none.yaml"], f"config file {tmp}/none.yaml not found"),
        ]
    )
    assert not (tmp_path / "run").exists()


def test_option_values_spelled_in_the_cli_are_the_trainers() -> None:
    """The CLI spells the choices to avoid importing torch; they must stay those the trainers accept."""
    from radlens.models.classifier import Arch, UncertainPolicy
    from radlens.train.classifier import PRESETS
    from radlens.train.negatives import STRATEGIES
    from radlens.train.presets import PRESET_NAMES
    from radlens.train.retrieval import RetrievalRunConfig

    assert train_cmd._PRESETS == PRESET_NAMES
    assert train_cmd._NEGATIVES == STRATEGIES
    assert get_args(RetrievalRunConfig.model_fields["model"].annotation) == train_cmd._MODELS
    assert tuple(PRESETS) == classifier_cmd._PRESETS
    assert get_args(Arch) == classifier_cmd._ARCHS
    assert get_args(UncertainPolicy) == classifier_cmd._UNCERTAIN

"""``radlens train retrieval`` end to end on tiny models and 24 RadPhantom studies."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from train_helpers import TINY_DUAL, TINY_FUSION, TINY_TRAIN, write_yaml

from radlens.cli import main
from radlens.models.checkpoint import load_checkpoint, model_fingerprint, read_checkpoint_info
from radlens.models.dual_encoder import DualEncoder
from radlens.models.fusion import FusionModel
from radlens.train.metric import MetricProjection


def _train(*args: str) -> int:
    return main(["-q", "train", "retrieval", *args])


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:")
    return err


@pytest.fixture(scope="module")
def dual_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("yaml")
    return write_yaml(
        folder / "dual.yaml", {"train": TINY_TRAIN, "precompute_frozen": False, "dual_encoder": TINY_DUAL}
    )


@pytest.fixture(scope="module")
def dual_run(tmp_path_factory: pytest.TempPathFactory, phantom: Path, dual_yaml: Path) -> Path:
    out = tmp_path_factory.mktemp("runs") / "dual"
    assert _train("--data", str(phantom), "--out", str(out), "--config", str(dual_yaml)) == 0
    return out


def test_dual_run_writes_model_logs_and_config(dual_run: Path) -> None:
    model = load_checkpoint(dual_run)
    assert isinstance(model, DualEncoder) and model.config.embed_dim == TINY_DUAL["embed_dim"]
    rows = [json.loads(line) for line in (dual_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(row["loss"]) and row["lr"] >= 0 for row in rows)
    with Image.open(dual_run / "loss_curve.png") as image:
        assert image.format == "PNG"
    config = yaml.safe_load((dual_run / "config.yaml").read_text())
    assert (config["model"], config["preset"], config["train"]["max_steps"]) == ("dual", "cpu-demo", 4)
    assert config["train"]["weight_decay"] == 1e-4  # from the preset, under the YAML file's values
    assert config["dual_encoder"]["image_tower"] == "small_cnn" and config["fusion"] is None
    validation = json.loads((dual_run / "validation.json").read_text())
    assert validation["studies"] == 3 and 0 <= validation["recall@5_image_to_text"] <= 1
    assert np.isfinite(validation["infonce_loss"])
    # the final model is the last checkpoint's
    last = load_checkpoint(dual_run / "checkpoint-4")
    torch.testing.assert_close(model.state_dict()["logit_scale"], last.state_dict()["logit_scale"])
    assert read_checkpoint_info(dual_run).extra["step"] == 4


def _assert_resume_reproduces_the_run(options: list[str], root: Path, columns: tuple[str, ...]) -> None:
    """Train 6 steps into ROOT/full; copy its step-3 checkpoint into ROOT/killed (what a run killed after
    saving step 3 leaves behind) and resume there: the logged ``columns`` and the final weights agree."""
    full, killed = root / "full", root / "killed"
    assert _train(*options, "--out", str(full)) == 0
    killed.mkdir()
    shutil.copytree(full / "checkpoint-3", killed / "checkpoint-3")
    assert _train(*options, "--out", str(killed), "--resume") == 0
    rows = {
        name: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for name, run in (("full", full), ("resumed", killed))
    }
    assert len(rows["full"]) == 6
    for key in columns:
        np.testing.assert_allclose(
            [r[key] for r in rows["resumed"]], [r[key] for r in rows["full"]], atol=1e-6, rtol=0
        )
    expected, got = load_checkpoint(full).state_dict(), load_checkpoint(killed).state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0)


def test_resume_of_precomputed_run_matches_uninterrupted(tmp_path: Path, phantom: Path) -> None:
    """The cpu-demo path (frozen features computed once) resumes exactly from a saved checkpoint."""
    frozen = {**TINY_DUAL, "trainable_image_stages": 1, "trainable_text_stages": 1}
    config = write_yaml(
        tmp_path / "frozen.yaml",
        {
            "train": {**TINY_TRAIN, "max_steps": 6, "checkpoint_every": 3},
            "precompute_frozen": True,
            "dual_encoder": frozen,
        },
    )
    options = ["--data", str(phantom), "--config", str(config), "--cache-dir", str(tmp_path / "cache")]
    _assert_resume_reproduces_the_run(options, tmp_path, ("loss",))


def test_fusion_run_with_ni_negatives(tmp_path: Path, phantom: Path) -> None:
    config = write_yaml(tmp_path / "fusion.yaml", {"train": TINY_TRAIN, "fusion": TINY_FUSION})
    out = tmp_path / "fusion"
    args = [
        "--data",
        str(phantom),
        "--out",
        str(out),
        "--model",
        "fusion",
        "--negatives",
        "NI",
        "--config",
        str(config),
    ]
    assert _train(*args) == 0
    assert isinstance(load_checkpoint(out), FusionModel)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["loss"] == pytest.approx(row["itm_loss"] + row["mlm_loss"], rel=1e-5)
        assert 0 <= row["itm_accuracy"] <= 1 and 0 <= row["negative_fallback_rate"] <= 1
    validation = json.loads((out / "validation.json").read_text())
    assert validation["negatives"] == "NI" and 0 <= validation["itm_accuracy"] <= 1
    assert validation["mlm_accuracy"] is None or 0 <= validation["mlm_accuracy"] <= 1


def test_fusion_on_the_dual_run_is_aligned_and_calibrated(
    tmp_path: Path, phantom: Path, dual_run: Path
) -> None:
    config = write_yaml(tmp_path / "fusion.yaml", {"train": TINY_TRAIN, "fusion": TINY_FUSION})
    out = tmp_path / "aligned"
    args = ["--data", str(phantom), "--out", str(out), "--model", "fusion", "--base", str(dual_run)]
    assert _train(*args, "--config", str(config)) == 0
    model, dual = load_checkpoint(out), load_checkpoint(dual_run)
    assert isinstance(model, FusionModel) and isinstance(dual, DualEncoder)
    assert model.config.aligner == dual.config and model.config.image_source == TINY_DUAL["image_tower"]
    for name, value in dual.image_tower.state_dict().items():  # the aligner is the dual encoder, untouched
        torch.testing.assert_close(model.image_tower.state_dict()[name], value)
    # calibrated before the first step: 4 AdamW steps at lr 1e-3 move a scalar by at most ~4e-3, so a
    # scale or threshold further than that from its initial 1 and 0 was set by the calibration
    scale, threshold = model.alignment_scale.item(), model.alignment_threshold.item()
    assert abs(scale - 1.0) > 0.05 or abs(threshold) > 0.05
    validation = json.loads((out / "validation.json").read_text())
    assert validation["negatives"] == "R" and 0 <= validation["itm_accuracy"] <= 1


def test_resume_of_precomputed_fusion_run_matches_uninterrupted(
    tmp_path: Path, phantom: Path, dual_run: Path
) -> None:
    """A fusion run on precomputed aligner outputs resumes exactly (masking draws included)."""
    config = write_yaml(
        tmp_path / "fusion.yaml",
        {
            "train": {**TINY_TRAIN, "max_steps": 6, "checkpoint_every": 3},
            "precompute_frozen": True,
            "fusion": TINY_FUSION,
        },
    )
    options = ["--data", str(phantom), "--model", "fusion", "--base", str(dual_run), "--config", str(config)]
    options += ["--negatives", "NE", "--cache-dir", str(tmp_path / "cache")]
    _assert_resume_reproduces_the_run(options, tmp_path, ("loss", "itm_loss", "mlm_loss"))


def test_metric_stage_leaves_out_unlabelled_studies(
    tmp_path: Path, phantom: Path, dual_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Studies without CheXpert labels have an unknown label set, not the empty one: the metric stage
    trains without them (and says so) instead of grouping them into one class."""
    data = _phantom_with_labels(phantom, tmp_path / "half-labelled", keep_every=2)
    config = write_yaml(tmp_path / "metric.yaml", {"train": {**TINY_TRAIN, "batch_size": 8}})
    out = tmp_path / "metric"
    args = ["--data", str(data), "--out", str(out), "--model", "metric", "--base", str(dual_run)]
    capsys.readouterr()
    assert main(["train", "retrieval", *args, "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert " of 19 training studies have no CheXpert labels and were left out of the metric stage" in printed


def test_metric_stage_on_the_dual_run(tmp_path: Path, phantom: Path, dual_run: Path) -> None:
    config = write_yaml(
        tmp_path / "metric.yaml", {"train": {**TINY_TRAIN, "batch_size": 16}, "metric": {"out_dim": 8}}
    )
    out = tmp_path / "metric"
    args = ["--data", str(phantom), "--out", str(out), "--model", "metric", "--base", str(dual_run)]
    assert _train(*args, "--config", str(config)) == 0
    projection = load_checkpoint(out)
    assert isinstance(projection, MetricProjection)
    assert projection.config.base_fingerprint == model_fingerprint(dual_run)
    assert projection.config.source == "dual_encoder" and projection.config.in_dim == TINY_DUAL["embed_dim"]
    assert read_checkpoint_info(out).extra["base"] == str(dual_run.resolve())
    validation = json.loads((out / "validation.json").read_text())
    assert {"precision@5_before", "precision@5_after"} <= set(validation)


def _phantom_with_labels(phantom: Path, out: Path, keep_every: int | None) -> Path:
    """A copy of ``phantom`` whose CheXpert table keeps every ``keep_every``-th study (None: no study)."""
    shutil.copytree(phantom, out)
    table = out / "mimic-cxr-2.0.0-chexpert.csv.gz"
    with gzip.open(table, "rt") as handle:
        header, *rows = handle.read().splitlines()
    kept = [row for index, row in enumerate(rows) if keep_every is not None and index % keep_every == 0]
    with gzip.open(table, "wt") as handle:
        handle.write("\n".join([header, *kept]) + "\n")
    return out


def _bad(tmp_path: Path, phantom: Path, dual_yaml: Path, dual_run: Path) -> dict[str, tuple[list[str], str]]:
    data = ["--data", str(phantom)]
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    unlabelled = _phantom_with_labels(phantom, tmp_path / "unlabelled", keep_every=None)
    metric = write_yaml(tmp_path / "metric.yaml", {"train": {**TINY_TRAIN, "batch_size": 8}})
    fusion = write_yaml(
        tmp_path / "fusion-mlm.yaml", {"train": TINY_TRAIN, "fusion": TINY_FUSION, "mlm_probability": 1.5}
    )
    betas = write_yaml(
        tmp_path / "betas.yaml",
        {
            "train": {**TINY_TRAIN, "adam_betas": [1.5, 0.999]},
            "precompute_frozen": False,
            "dual_encoder": TINY_DUAL,
        },
    )
    dual = [*data, "--config", str(dual_yaml)]
    metric_args = ["--model", "metric", "--base", str(dual_run), "--config", str(metric)]
    no_train = tmp_path / "no-train"
    shutil.copytree(phantom, no_train)
    split = no_train / "mimic-cxr-2.0.0-split.csv.gz"
    with gzip.open(split, "rt") as handle:
        lines = handle.read().splitlines()
    with gzip.open(split, "wt") as handle:
        handle.write("\n".join([lines[0]] + [line.replace(",train", ",test") for line in lines[1:]]) + "\n")
    other = write_yaml(
        tmp_path / "other.yaml",
        {"train": {**TINY_TRAIN, "lr": 0.5}, "precompute_frozen": False, "dual_encoder": TINY_DUAL},
    )
    precomputed = write_yaml(tmp_path / "precomputed.yaml", {"precompute_frozen": True})
    return {
        "missing data": (["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o1")], "not found"),
        "unknown format": ([*data, "--format", "dicom", "--out", str(tmp_path / "o2")], "unknown --format"),
        "wrong format": ([*data, "--format", "iu", "--out", str(tmp_path / "o3")], "not an IU X-ray folder"),
        "no training studies": (
            ["--data", str(no_train), "--out", str(tmp_path / "o4"), "--config", str(dual_yaml)],
            "no training studies",
        ),
        "unknown preset": ([*data, "--preset", "gpu-max", "--out", str(tmp_path / "o5")], "unknown --preset"),
        "resume without checkpoint": (
            [*data, "--out", str(tmp_path / "o6"), "--resume"],
            "no checkpoint to resume",
        ),
        "resume with another config": (
            [*data, "--out", str(dual_run), "--resume", "--config", str(other)],
            "different config",
        ),
        "metric without base": (
            [*data, "--out", str(tmp_path / "o7"), "--model", "metric"],
            "error: --model metric needs --base",
        ),
        "negatives for dual": (
            [*data, "--out", str(tmp_path / "o8"), "--negatives", "NI"],
            "error: --negatives applies to --model fusion only",
        ),
        "base for dual": (
            [*data, "--out", str(tmp_path / "o9"), "--base", str(dual_run)],
            "error: --base applies to --model fusion",
        ),
        "precomputed fusion without base": (
            [*data, "--out", str(tmp_path / "o10"), "--model", "fusion", "--config", str(precomputed)],
            "error: precompute_frozen with --model fusion needs --base DUAL_CKPT",
        ),
        "out not empty": ([*data, "--out", str(dual_run), "--config", str(dual_yaml)], "not empty"),
        "no steps": (
            [*data, "--out", str(tmp_path / "o11"), "--max-steps", "0"],
            "--max-steps must be at least 1",
        ),
        "resume and overwrite": (
            [*data, "--out", str(dual_run), "--resume", "--overwrite"],
            "--resume and --overwrite contradict each other",
        ),
        "mlm probability above 1": (
            [*data, "--out", str(tmp_path / "o12"), "--model", "fusion", "--config", str(fusion)],
            "invalid option mlm_probability: Input should be less than or equal to 1",
        ),
        "adam beta of 1 or more": (
            [*data, "--out", str(tmp_path / "o13"), "--config", str(betas)],
            "invalid option train.adam_betas.0: Input should be less than 1",
        ),
        "cache dir is a file (with --overwrite)": (
            [*dual, "--out", str(dual_run), "--overwrite", "--cache-dir", str(a_file)],
            f"--cache-dir {a_file}: output path {a_file.resolve()} is a file",
        ),
        "cache dir under a file": (
            [*dual, "--out", str(tmp_path / "o14"), "--cache-dir", str(a_file / "c")],
            f"--cache-dir {a_file / 'c'}: output path {a_file.resolve()} is a file",
        ),
        "metric stage on unlabelled studies": (
            [*metric_args, "--data", str(unlabelled), "--out", str(tmp_path / "o15")],
            "no training study has CheXpert labels",
        ),
    }


def test_bad_inputs_exit_2_with_one_line(
    tmp_path: Path, phantom: Path, dual_yaml: Path, dual_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    before = sorted(path.name for path in dual_run.iterdir())
    for name, (args, message) in _bad(tmp_path, phantom, dual_yaml, dual_run).items():
        assert _train(*args) == 2, name
        line = _error_line(capsys)
        assert message in line, (name, line)
    assert sorted(path.name for path in dual_run.iterdir()) == before  # refused runs touched nothing
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 16))


def test_overwrite_restarts_a_run(
    tmp_path: Path, phantom: Path, dual_yaml: Path, dual_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "again"
    shutil.copytree(dual_run, out)
    (out / "checkpoint-2" / "stale-marker").write_text("x")
    changed = write_yaml(
        tmp_path / "two.yaml",
        {"train": {**TINY_TRAIN, "max_steps": 2}, "precompute_frozen": False, "dual_encoder": TINY_DUAL},
    )
    args = ["train", "retrieval", "--data", str(phantom), "--out", str(out), "--config", str(changed)]
    assert main([*args, "--overwrite"]) == 0  # not quiet: the summary is printed
    printed = capsys.readouterr().out.splitlines()
    studies = json.loads((out / "validation.json").read_text())["studies"]
    assert printed[0].startswith("trained dual (cpu-demo) for 2 steps on ") and ": final loss " in printed[0]
    assert any(line.startswith(f"validation ({studies} studies): ") for line in printed)
    assert printed[-1] == f"wrote {out} (model, metrics.jsonl, loss_curve.png, validation.json)"
    assert not (out / "checkpoint-4").exists() and not (out / "checkpoint-2" / "stale-marker").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_overwrite_never_deletes_an_input(
    tmp_path: Path, phantom: Path, dual_yaml: Path, dual_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out naming the --data or --base folder, or a folder above one, is refused before anything is
    read or deleted (with --overwrite the run used to delete the dataset it was about to train on)."""
    data, base = tmp_path / "inputs" / "data", tmp_path / "inputs" / "base"
    shutil.copytree(phantom, data)
    shutil.copytree(dual_run, base)
    before = {folder: _files(folder) for folder in (data, base)}
    dual = ["--data", str(data), "--config", str(dual_yaml), "--overwrite"]
    fusion = ["--data", str(data), "--model", "fusion", "--base", str(base), "--overwrite"]
    for args, given in (
        ([*dual, "--out", str(data)], f"is the input {data}"),
        ([*dual, "--out", str(tmp_path / "inputs")], f"holds the input {data}"),
        ([*fusion, "--out", str(base)], f"is the input {base}"),
    ):
        capsys.readouterr()
        assert _train(*args) == 2, args
        assert given in _error_line(capsys)
    assert {folder: _files(folder) for folder in (data, base)} == before


def test_reports_unzipped_outside_the_dataset(
    tmp_path: Path, phantom: Path, dual_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A MIMIC-CXR-JPG copy one cannot write to: the reports sit elsewhere, named by --reports-root,
    and train retrieval, index build and data check read the same studies as with them inside."""
    data, reports = tmp_path / "jpg", tmp_path / "reports"
    shutil.copytree(phantom, data)
    moved = sorted(data.glob("files/p*/p*/s*.txt"))
    assert moved
    for report in moved:
        target = reports / report.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        report.rename(target)
    capsys.readouterr()
    assert _train("--data", str(data), "--out", str(tmp_path / "no"), "--config", str(dual_yaml)) == 2
    assert "none of the 24 report file(s) exist" in (line := _error_line(capsys)) and "--reports-root" in line

    run = tmp_path / "run"
    args = [
        "--data",
        str(data),
        "--reports-root",
        str(reports),
        "--out",
        str(run),
        "--config",
        str(dual_yaml),
    ]
    assert _train(*args) == 0
    assert json.loads((run / "validation.json").read_text())["studies"] == 3  # as in test_dual_run...
    index = tmp_path / "index"
    build = ["-q", "index", "build", "--model", str(run), "--data", str(data), "--out", str(index)]
    assert main([*build, "--reports-root", str(reports), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((index / "index.json").read_text())["counts"]["texts"] == 24
    assert (
        main(["data", "check", str(data), "--format", "mimic", "--json", "--reports-root", str(reports)]) == 0
    )
    assert json.loads(capsys.readouterr().out)["studies"] == 24


def test_a_run_from_before_an_option_existed_resumes(
    tmp_path: Path, phantom: Path, dual_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint written before a config field was added (here: reports_root) resumes while that
    option is unset; a field that now has a value (here: augment) is still a different config."""

    def older_run(out: Path, missing: str) -> Path:
        shutil.copytree(dual_run / "checkpoint-2", out / "checkpoint-2")
        state = out / "checkpoint-2" / "training_state" / "state.json"
        document = json.loads(state.read_text())
        del document["run_config"][missing]
        state.write_text(json.dumps(document))
        return out

    capsys.readouterr()
    unset = older_run(tmp_path / "unset", "reports_root")
    assert _train("--data", str(phantom), "--out", str(unset), "--resume") == 0
    assert json.loads((unset / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    valued = older_run(tmp_path / "valued", "augment")
    assert _train("--data", str(phantom), "--out", str(valued), "--resume") == 2
    assert "different config (augment: False now, '<unset>' in the checkpoint)" in _error_line(capsys)


def test_a_radlens_0_1_run_resumes_with_the_normalization_it_started_with(
    tmp_path: Path, phantom: Path, dual_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """radlens 0.1 wrote no image_normalization (it meant ImageNet statistics): its run resumes as
    'imagenet', never with 0.2's default, and an explicit other value is refused, naming 'imagenet'."""

    def run_0_1(out: Path) -> Path:
        shutil.copytree(dual_run / "checkpoint-2", out / "checkpoint-2")
        for path in (
            out / "checkpoint-2" / "config.json",
            out / "checkpoint-2" / "training_state" / "state.json",
        ):
            document = json.loads(path.read_text())
            section = document["run_config"]["dual_encoder"] if "run_config" in document else document
            del section["image_normalization"]
            path.write_text(json.dumps(document))
        return out

    capsys.readouterr()
    resumed = run_0_1(tmp_path / "resumed")
    assert _train("--out", str(resumed), "--resume") == 0
    model = load_checkpoint(resumed)
    assert isinstance(model, DualEncoder) and model.config.image_normalization == "imagenet"
    assert (
        json.loads((resumed / "checkpoint-4" / "training_state" / "state.json").read_text())["run_config"][
            "dual_encoder"
        ]["image_normalization"]
        == "imagenet"
    )
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    full = [json.loads(line) for line in (dual_run / "metrics.jsonl").read_text().splitlines()]
    # the tiny from-scratch tower normalises with 0.5/0.5 either way, so the curve is the run's own
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in full], atol=1e-6, rtol=0)

    refused = run_0_1(tmp_path / "refused")
    changed = write_yaml(tmp_path / "inception.yaml", {"dual_encoder": {"image_normalization": "inception"}})
    assert _train("--out", str(refused), "--resume", "--config", str(changed)) == 2
    assert "dual_encoder.image_normalization: 'inception' now, 'imagenet' in the checkpoint" in _error_line(
        capsys
    )


@pytest.mark.slow
def test_two_processes_train_a_new_run_and_resume_it_exactly(
    tmp_path: Path, phantom: Path, dual_yaml: Path
) -> None:
    """torchrun with 2 CPU processes (gloo): a fresh --out is checked by the first process only (each
    used to check it, and the second found the first one's image cache and refused the folder), the
    checkpoints record 2 processes, and a resume from step 2 logs the same losses and ends at the same
    weights."""

    def train(*args: str) -> None:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
        ]
        command += ["-m", "radlens.cli", "-q", "train", "retrieval", *args]
        env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]

    full, killed = tmp_path / "full", tmp_path / "killed"
    train("--data", str(phantom), "--out", str(full), "--config", str(dual_yaml))
    state = json.loads((full / "checkpoint-4" / "training_state" / "state.json").read_text())
    assert state["num_processes"] == 2
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # one process writes the log
    assert (full / "image-cache").is_dir() and (full / "validation.json").is_file()
    killed.mkdir()
    shutil.copytree(full / "checkpoint-2", killed / "checkpoint-2")
    train("--out", str(killed), "--resume")
    resumed = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in rows], atol=1e-6, rtol=0)
    expected, got = load_checkpoint(full).state_dict(), load_checkpoint(killed).state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0)

"""``build_index`` (what it stores, what it skips, what it refuses) and ``evaluate_retrieval`` (its
numbers are ``retrieval_report`` of the model's embeddings; its files; the fusion table)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from retrieval_helpers import IMAGE_SIZE, World, world

from radlens.core import InputError
from radlens.data.cache import ImageCache
from radlens.data.transforms import ResizePolicy
from radlens.metrics.retrieval import retrieval_report
from radlens.models import load_checkpoint, model_fingerprint
from radlens.retrieval import RetrievalIndex, build_index, evaluate_retrieval


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def _fresh_embeddings(tiny: World, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """The model's embeddings of ``rows`` computed here, not read from the index."""
    model = load_checkpoint(tiny.dual)
    cache = ImageCache(tiny.index.parent / "cache", ResizePolicy(mode="square", size=IMAGE_SIZE))
    pixels = torch.stack(
        [torch.from_numpy(cache.decode(row["image_path"]).astype(np.float32) / 255) for row in rows]
    )
    return model.embed_images(pixels[:, None]).numpy(), model.embed_texts([row["report"] for row in rows])[
        0
    ].numpy()


def _labels(rows: list[dict]) -> np.ndarray:  # type: ignore[type-arg]
    return np.array(
        [[np.nan if v is None else v for v in row["labels"].values()] for row in rows], dtype=float
    )


def test_index_records_model_and_run(tiny: World) -> None:
    index = RetrievalIndex.open(tiny.index)
    assert index.fingerprint == model_fingerprint(tiny.dual)
    assert index.info["model_type"] == "dual_encoder" and len(index) == len(tiny.records)
    config = (tiny.index / "config.yaml").read_text()
    assert f"model: {tiny.dual}" in config and "kind: flat" in config
    assert json.loads((tiny.index / "versions.json").read_text())["faiss-cpu"]
    assert (tiny.index / "problems.jsonl").read_text() == ""


def test_unreadable_and_reportless_studies_are_skipped_and_listed(tiny: World, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny.data, data)
    broken, empty = tiny.records[0], tiny.records[1]
    broken_path = data / broken.images[0].path.relative_to(tiny.data)
    broken_path.write_bytes(b"\xff\xd8 not really a jpeg")
    report = data / empty.images[0].path.relative_to(tiny.data).parent.with_suffix(".txt")
    report.write_text("")  # the reader skips it and records why; the build must pass that on
    summary = build_index(tiny.dual, data, tmp_path / "index", cache_dir=tmp_path / "cache")
    assert summary.count == len(tiny.records) - 2
    problems = [json.loads(line) for line in (tmp_path / "index" / "problems.jsonl").read_text().splitlines()]
    assert {problem["path"] for problem in problems} == {str(broken_path), str(report)}
    assert all(problem["reason"] for problem in problems)
    ids = {row["study_id"] for row in RetrievalIndex.open(tmp_path / "index").rows}
    assert broken.study_id not in ids and empty.study_id not in ids


def test_split_filter_and_ivf_kind(tiny: World, tmp_path: Path) -> None:
    summary = build_index(
        tiny.dual, tiny.data, tmp_path / "ivf", kind="ivf", splits=["train"], cache_dir=tmp_path / "c"
    )
    index = RetrievalIndex.open(tmp_path / "ivf")
    assert index.info["kinds"]["images"] == "ivf"
    assert summary.count == sum(record.split == "train" for record in tiny.records) == len(index)
    assert {row["split"] for row in index.rows} == {"train"}


def test_build_refusals(tiny: World, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not empty"):
        build_index(tiny.dual, tiny.data, tiny.index)
    with pytest.raises(InputError, match="fusion model, which cannot embed"):
        build_index(tiny.fusion, tiny.data, tmp_path / "x")
    with pytest.raises(InputError, match="not found"):
        build_index(tiny.dual, tmp_path / "nowhere", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_build_never_replaces_its_model_or_data(tiny: World, tmp_path: Path) -> None:
    model, data = tmp_path / "model", tmp_path / "data"
    shutil.copytree(tiny.dual, model)
    shutil.copytree(tiny.data, data)
    before = sorted(tmp_path.rglob("*"))
    for out, relation, given in ((model, "is", model), (data, "is", data), (tmp_path, "holds", model)):
        with pytest.raises(InputError, match=f"{relation} the input {re.escape(str(given))}"):
            build_index(model, data, out, overwrite=True)
    assert sorted(tmp_path.rglob("*")) == before


def test_eval_equals_retrieval_report_of_the_embeddings(tiny: World, tmp_path: Path) -> None:
    out = tmp_path / "eval" / "results.json"
    result = evaluate_retrieval(tiny.index, tiny.dual, split=None, out=out)
    named = evaluate_retrieval(tiny.index, tiny.dual, split="all", out=tmp_path / "all" / "results.json")
    assert named.count == result.count and named.report == result.report
    saved = json.loads(out.read_text())
    assert set(saved) == {"image_to_text", "text_to_image"}
    expected_keys = {
        "recall@1",
        "recall@5",
        "recall@10",
        "median_rank",
        "mrr",
        "precision@5",
        "precision@10",
        "map@10",
    }
    expected_keys |= {f"{key}_share_positive" for key in ("precision@5", "precision@10", "map@10")}
    expected_keys |= {f"{key}_best_possible" for key in expected_keys if key.startswith("precision")}
    for direction in saved.values():
        assert expected_keys == set(direction)
    rows = RetrievalIndex.open(tiny.index).rows
    images, texts = _fresh_embeddings(tiny, rows)
    expected = retrieval_report(images, texts, _labels(rows))
    for direction, metrics in expected.items():
        for name, value in metrics.items():
            assert saved[direction][name] == pytest.approx(value, abs=1e-9), (direction, name)
    assert result.count == len(rows)
    markdown = out.with_suffix(".md").read_text()
    assert "| image → text |" in markdown and "R@10" in markdown and "shares a positive label" in markdown
    assert (out.parent / "results_config.yaml").is_file() and (out.parent / "versions.json").is_file()


def test_eval_on_a_split_pool_is_seeded(tiny: World, tmp_path: Path) -> None:
    first = evaluate_retrieval(tiny.index, tiny.dual, split="train", out=tmp_path / "a.json", pool=10, seed=3)
    again = evaluate_retrieval(tiny.index, tiny.dual, split="train", out=tmp_path / "b.json", pool=10, seed=3)
    assert first.count == 10 and first.report == again.report
    with pytest.raises(InputError, match="larger than"):
        evaluate_retrieval(tiny.index, tiny.dual, split="test", out=tmp_path / "c.json", pool=500)
    with pytest.raises(InputError, match="no study in split 'holdout'"):
        evaluate_retrieval(tiny.index, tiny.dual, split="holdout", out=tmp_path / "c.json")
    with pytest.raises(InputError, match="built with another model"):
        evaluate_retrieval(tiny.index, tiny.other, out=tmp_path / "c.json")
    with pytest.raises(InputError, match=r"\.json"):
        evaluate_retrieval(tiny.index, tiny.dual, out=tmp_path / "results.txt")
    assert not (tmp_path / "c.json").exists()


def test_fusion_table(tiny: World, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = evaluate_retrieval(tiny.index, tiny.dual, split="train", out=out, fusion=[tiny.fusion])
    (row,) = result.fusion
    n_validate = sum(record.split == "validate" for record in tiny.records)
    assert row.strategy == "NE" and row.pairs == 2 * n_validate
    for value in (row.itm_accuracy, row.itm_accuracy_random, row.mlm_accuracy):
        assert 0.0 <= value <= 1.0
    assert row.itm_loss > 0 and row.mlm_loss > 0
    assert json.loads((tmp_path / "fusion.json").read_text())[0]["strategy"] == "NE"
    assert "| NE |" in out.with_suffix(".md").read_text()


def test_fusion_table_never_replaces_the_results(tiny: World, tmp_path: Path) -> None:
    out = tmp_path / "fusion.json"  # the name the fusion table gets beside results.json
    result = evaluate_retrieval(tiny.index, tiny.dual, split="train", out=out, fusion=[tiny.fusion])
    table = tmp_path / "fusion_fusion.json"
    assert out in result.files and table in result.files
    assert set(json.loads(out.read_text())) == {"image_to_text", "text_to_image"}
    assert json.loads(table.read_text())[0]["strategy"] == "NE"
    assert (tmp_path / "fusion.md").is_file() and (tmp_path / "fusion_config.yaml").is_file()


def test_bad_out_is_refused_before_any_work(tmp_path: Path) -> None:
    # No index or model exists at these paths: the --out check must come first.
    nowhere, no_model = tmp_path / "no-index", tmp_path / "no-model"
    (tmp_path / "plain").write_text("")
    (tmp_path / "script").write_text("")
    (tmp_path / "script").chmod(0o755)  # an executable file among the parents
    (tmp_path / "results.md").mkdir()
    cases = [
        (tmp_path / "plain" / "r.json", r"output path .*plain is a file"),
        (tmp_path / "script" / "sub" / "r.json", r"output path .*script is a file"),
        (tmp_path / "versions.json", "overwritten by this run's versions.json"),
        (tmp_path / "results.json", r"output path .*results\.md is a folder"),
    ]
    for out, message in cases:
        with pytest.raises(InputError, match=message) as caught:
            evaluate_retrieval(nowhere, no_model, out=out)
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "versions.json").exists() and not (tmp_path / "results.json").exists()
    # /proc refuses new files even to root (CI runs as root, so permission bits alone would not do).
    with pytest.raises(InputError, match=r"cannot write to /proc"):
        evaluate_retrieval(nowhere, no_model, out=Path("/proc/radlens-test/r.json"))


@pytest.mark.parametrize("name", ["index.json", "results.json"])
def test_out_inside_the_index_folder_is_refused(tiny: World, tmp_path: Path, name: str) -> None:
    index = tmp_path / "index"
    shutil.copytree(tiny.index, index)
    before = {path.name: path.read_bytes() for path in index.iterdir()}
    with pytest.raises(InputError, match="inside an index folder"):
        evaluate_retrieval(index, tiny.dual, split=None, out=index / name)
    with pytest.raises(InputError, match="inside an index folder"):  # another index's folder too
        evaluate_retrieval(tiny.index, tiny.dual, split=None, out=index / name)
    assert {path.name: path.read_bytes() for path in index.iterdir()} == before
    RetrievalIndex.open(index)


def test_fusion_strategy_comes_from_the_checkpoint_or_its_run(tiny: World, tmp_path: Path) -> None:
    fusion = tmp_path / "run"
    shutil.copytree(tiny.fusion, fusion)
    config = json.loads((fusion / "config.json").read_text())
    config["extra"] = {"step": 10}
    (fusion / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="negative strategy"):
        evaluate_retrieval(tiny.index, tiny.dual, split="train", out=tmp_path / "r.json", fusion=[fusion])
    assert not (tmp_path / "r.json").exists()
    (fusion / "config.yaml").write_text("model: fusion\nnegatives: NI\n")  # what `radlens train` writes
    result = evaluate_retrieval(
        tiny.index, tiny.dual, split="train", out=tmp_path / "r.json", fusion=[fusion]
    )
    assert result.fusion[0].strategy == "NI"


def _metric_checkpoint(tiny: World, folder: Path, base_fingerprint: str, base: Path | None) -> Path:
    from radlens.models import save_checkpoint
    from radlens.train.metric import MetricProjection, MetricProjectionConfig

    torch.manual_seed(3)
    config = MetricProjectionConfig(
        in_dim=32,
        out_dim=16,
        source="dual_encoder",
        base_model_type="dual_encoder",
        base_fingerprint=base_fingerprint,
    )
    save_checkpoint(MetricProjection(config), folder)
    if base is not None:  # where `radlens train retrieval --model metric` records its base
        (folder / "config.yaml").write_text(f"model: metric\nbase: {base}\n")
    return folder


def test_metric_stage_index_holds_projected_embeddings(tiny: World, tmp_path: Path) -> None:
    metric = _metric_checkpoint(tiny, tmp_path / "metric", model_fingerprint(tiny.dual), tiny.dual)
    build_index(
        metric, tiny.data, tmp_path / "index", splits=["train"], cache_dir=tiny.index.parent / "cache"
    )
    index = RetrievalIndex.open(tmp_path / "index")
    assert index.fingerprint == model_fingerprint(metric) != model_fingerprint(tiny.dual)
    assert index.info["model_type"] == "metric_projection" and index.images.dim == 16
    images, texts = _fresh_embeddings(tiny, index.rows)
    projection = load_checkpoint(metric)
    with torch.no_grad():
        expected_images = torch.nn.functional.normalize(projection(torch.from_numpy(images)), dim=-1).numpy()
        expected_texts = torch.nn.functional.normalize(projection(torch.from_numpy(texts)), dim=-1).numpy()
    np.testing.assert_allclose(index.images.index.reconstruct_n(0, len(index)), expected_images, atol=1e-5)
    np.testing.assert_allclose(index.texts.index.reconstruct_n(0, len(index)), expected_texts, atol=1e-5)
    from radlens.retrieval import Retriever

    record = next(r for r in tiny.records if r.split == "train")
    assert Retriever.load(tmp_path / "index", metric).search_image(record.images[0].path, k=1)


def test_metric_stage_needs_its_own_base(tiny: World, tmp_path: Path) -> None:
    wrong = _metric_checkpoint(tiny, tmp_path / "wrong", model_fingerprint(tiny.dual), tiny.other)
    with pytest.raises(InputError, match="trained on another model"):
        build_index(wrong, tiny.data, tmp_path / "i1")
    lost = _metric_checkpoint(tiny, tmp_path / "lost", model_fingerprint(tiny.dual), None)
    with pytest.raises(InputError, match="does not record where its base"):
        build_index(lost, tiny.data, tmp_path / "i2")
    assert not (tmp_path / "i1").exists() and not (tmp_path / "i2").exists()

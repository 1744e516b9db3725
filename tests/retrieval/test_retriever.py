"""``Retriever``: the index holds the model's embeddings, queries find their own study, re-ranking
follows the fusion model, and every bad query is one InputError that never repeats the query."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from retrieval_helpers import IMAGE_SIZE, World, world

from radlens.core import InputError
from radlens.data.cache import ImageCache
from radlens.data.images import load_image
from radlens.data.transforms import ResizePolicy, resize
from radlens.models import load_checkpoint
from radlens.retrieval import Retriever, SearchFilter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


@pytest.fixture(scope="module")
def retriever(tiny: World) -> Retriever:
    return Retriever.load(tiny.index, tiny.dual, rerank_model_dir=tiny.fusion)


def _unique_text_records(tiny: World) -> list:  # type: ignore[type-arg]
    counts = Counter(record.report_text() for record in tiny.records)
    return [record for record in tiny.records if counts[record.report_text()] == 1]


def test_index_holds_the_models_embeddings_of_each_row(tiny: World, retriever: Retriever) -> None:
    """Row i of both FAISS indexes is a fresh encode of metadata row i's image and report."""
    model = load_checkpoint(tiny.dual)
    by_id = {record.study_id: record for record in tiny.records}
    rows = retriever.index.rows
    assert sorted(row["study_id"] for row in rows) == sorted(by_id)
    cache = ImageCache(tiny.index.parent / "cache", ResizePolicy(mode="square", size=IMAGE_SIZE))
    # The index was built through the uint8 image cache; decode the same way, independently of it.
    pixels = torch.stack(
        [torch.from_numpy(cache.decode(row["image_path"]).astype(np.float32) / 255) for row in rows]
    )
    images = model.embed_images(pixels[:, None]).numpy()
    texts = model.embed_texts([by_id[row["study_id"]].report_text() for row in rows])[0].numpy()
    stored_images = retriever.index.images.index.reconstruct_n(0, len(rows))
    stored_texts = retriever.index.texts.index.reconstruct_n(0, len(rows))
    np.testing.assert_allclose(stored_images, images, atol=1e-5)
    np.testing.assert_allclose(stored_texts, texts, atol=1e-5)
    for row in rows:
        record = by_id[row["study_id"]]
        assert row["image_path"] == str(record.images[0].path)
        assert row["report"] == record.report_text()


def test_own_report_and_own_image_rank_first(tiny: World, retriever: Retriever) -> None:
    """With the model trained to pair each image with its report, a study is its own best match."""
    records = _unique_text_records(tiny)
    assert len(records) >= 20
    for record in records:
        by_text = retriever.search_text(record.report_text(), k=3)
        assert by_text[0].study_id == record.study_id
        assert [hit.rank for hit in by_text] == [1, 2, 3]
        assert by_text[0].score >= by_text[1].score >= by_text[2].score
        by_image = retriever.search_image(record.images[0].path, k=1)
        assert by_image[0].study_id == record.study_id


def test_hit_fields_come_from_the_metadata(tiny: World, retriever: Retriever) -> None:
    record = _unique_text_records(tiny)[0]
    hit = retriever.search_text(record.report_text(), k=1)[0]
    assert hit.image_id == record.images[0].image_id
    assert hit.view == record.images[0].view_position and hit.split == record.split
    assert hit.positive_labels == sorted(record.positive_labels(), key=list(hit.labels).index)
    assert record.sections is not None and record.sections.impression is not None
    assert hit.impression == record.sections.impression.splitlines()[0].strip()
    assert hit.rerank_score is None
    assert retriever.study(record.study_id)["report"] == record.report_text()
    assert retriever.image_path(record.images[0].image_id) == record.images[0].path
    with pytest.raises(InputError, match="not in the index"):
        retriever.study("00000000")
    with pytest.raises(InputError, match="not in the index"):
        retriever.image_path("no-such-image")


def test_array_queries_match_file_queries(tiny: World, retriever: Retriever) -> None:
    path = tiny.records[5].images[0].path
    grey = load_image(path)
    from_file = retriever.search_image(path, k=5)
    from_float = retriever.search_image(grey, k=5)
    from_colour = retriever.search_image(
        np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2), k=5
    )
    assert [h.study_id for h in from_float] == [h.study_id for h in from_file]
    assert [h.study_id for h in from_colour] == [h.study_id for h in from_file]
    np.testing.assert_allclose([h.score for h in from_float], [h.score for h in from_file], atol=1e-6)


def test_filters_restrict_results(tiny: World, retriever: Retriever) -> None:
    query = tiny.records[0].report_text()
    test_hits = retriever.search_text(query, k=24, filters=SearchFilter(splits=("test",)))
    expected = {record.study_id for record in tiny.records if record.split == "test"}
    assert {hit.study_id for hit in test_hits} == expected
    label = Counter(name for record in tiny.records for name in record.positive_labels()).most_common(1)[0][0]
    labelled = retriever.search_text(query, k=24, filters=SearchFilter(positive=(label,)))
    assert labelled and all(hit.labels[label] == 1 for hit in labelled)
    assert len(labelled) == sum(label in record.positive_labels() for record in tiny.records)


def test_rerank_orders_candidates_by_itm_probability(tiny: World, retriever: Retriever) -> None:
    """The top N by embedding are re-scored with P(related) from the fusion model and sorted by it."""
    fusion = load_checkpoint(tiny.fusion)
    query = tiny.records[2].report_text()
    plain = retriever.search_text(query, k=24)
    reranked = retriever.search_text(query, k=8, rerank=8)
    assert {hit.study_id for hit in reranked} == {hit.study_id for hit in plain[:8]}
    scores = [hit.rerank_score for hit in reranked]
    assert all(score is not None for score in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert [hit.study_id for hit in reranked] != [hit.study_id for hit in plain[:8]]  # it did reorder
    encoded = fusion.tokenize([query] * len(reranked))
    policy = ResizePolicy(mode="square", size=IMAGE_SIZE)
    paths = [retriever.image_path(hit.image_id) for hit in reranked if hit.image_id]
    cache_free = torch.from_numpy(np.stack([resize(load_image(path), policy) for path in paths]))[:, None]
    with torch.no_grad():
        expected = fusion.itm_probability(encoded["input_ids"], encoded["attention_mask"], cache_free)
    np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5)
    # Fewer candidates than results: the best 3 are re-ranked, the rest keep the embedding order.
    partial = retriever.search_text(query, k=10, rerank=3)
    assert {hit.study_id for hit in partial[:3]} == {hit.study_id for hit in plain[:3]}
    assert [hit.study_id for hit in partial[3:]] == [hit.study_id for hit in plain[3:10]]
    assert all(hit.rerank_score is None for hit in partial[3:])
    assert [hit.rank for hit in partial] == list(range(1, 11))


def test_fingerprint_mismatch_is_refused(tiny: World) -> None:
    with pytest.raises(InputError, match="built with another model"):
        Retriever.load(tiny.index, tiny.other)


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_query_is_refused(retriever: Retriever, text: str) -> None:
    with pytest.raises(InputError, match="query text is empty"):
        retriever.search_text(text)


@pytest.mark.parametrize("k", [0, -1])
def test_k_must_be_positive(retriever: Retriever, k: int) -> None:
    with pytest.raises(InputError, match="k must be a positive"):
        retriever.search_text("pleural effusion", k=k)
    with pytest.raises(InputError, match="k must be a positive"):
        retriever.search_image(np.zeros((64, 64), np.float32), k=k)


def test_rerank_needs_a_fusion_model(tiny: World) -> None:
    plain = Retriever.load(tiny.index, tiny.dual)
    with pytest.raises(InputError, match="fusion model"):
        plain.search_text("pleural effusion", rerank=5)


def test_long_query_is_truncated_with_a_notice_and_never_logged(
    retriever: Retriever, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "zebra " + "large left pleural effusion with adjacent atelectasis " * 20
    caplog.set_level(logging.DEBUG)
    hits = retriever.search_text(secret, k=3)
    assert hits.truncated and len(hits) == 3
    assert any("64 tokens" in notice for notice in hits.notices)
    short = retriever.search_text("pleural effusion", k=3)
    assert not short.truncated and short.notices == ()
    captured = capsys.readouterr()
    everything = caplog.text + captured.out + captured.err + " ".join(hits.notices)
    assert "zebra" not in everything


def test_bad_images_are_refused(tmp_path: Path, retriever: Retriever) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    with pytest.raises(InputError, match="cannot read image"):
        retriever.search_image(not_image)
    with pytest.raises(InputError, match="file not found"):
        retriever.search_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="shape"):
        retriever.search_image(np.zeros((4, 64, 64, 2), np.float32))
    with pytest.raises(InputError, match="outside"):
        retriever.search_image(np.full((64, 64), 2.0, np.float32))

"""Retrieval metrics: hand-computed examples, the tie policy, label relevance, and torchmetrics agreement."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_average_precision
from torchmetrics.retrieval import RetrievalMAP, RetrievalMRR, RetrievalPrecision, RetrievalRecall

from radlens.data.schema import CHEXPERT_LABELS
from radlens.metrics.retrieval import (
    RelevanceMode,
    label_relevance,
    map_at_k,
    mean_reciprocal_rank,
    median_rank,
    precision_at_k,
    recall_at_k,
    retrieval_report,
    target_ranks,
    to_markdown,
)

NAN = float("nan")
NO_FINDING = CHEXPERT_LABELS.index("No Finding")
EDEMA = CHEXPERT_LABELS.index("Edema")
EFFUSION = CHEXPERT_LABELS.index("Pleural Effusion")

# Query i's paired item is item i. Ranks by hand: q0 → 1, q1 → 1, q2 → 2 (0.7 beats 0.6), q3 → 4.
SCORES = np.array(
    [
        [0.9, 0.1, 0.5, 0.2],
        [0.2, 0.8, 0.3, 0.1],
        [0.4, 0.7, 0.6, 0.0],
        [0.5, 0.6, 0.7, -0.3],
    ]
)


def _labels(*positives: tuple[int, ...]) -> np.ndarray:
    """One row per study: the given label columns positive, everything else blank (NaN)."""
    rows = np.full((len(positives), len(CHEXPERT_LABELS)), NAN)
    for row, columns in zip(rows, positives, strict=True):
        row[list(columns)] = 1.0
    return rows


def test_pairing_metrics_by_hand() -> None:
    assert target_ranks(SCORES).tolist() == [1, 1, 2, 4]
    assert recall_at_k(SCORES, k=1) == pytest.approx(2 / 4)
    assert recall_at_k(SCORES, k=2) == pytest.approx(3 / 4)
    assert recall_at_k(SCORES, k=4) == 1.0
    assert median_rank(SCORES) == pytest.approx(1.5)
    assert mean_reciprocal_rank(SCORES) == pytest.approx((1 + 1 + 1 / 2 + 1 / 4) / 4)


def test_explicit_pairing_and_rectangular_scores() -> None:
    # Three queries against four items; the correct items are 2, 0, 3.
    scores = SCORES[:3]
    assert target_ranks(scores, [2, 0, 3]).tolist() == [2, 3, 4]
    assert recall_at_k(scores, [2, 0, 3], k=3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="gt_index"):
        target_ranks(scores, [0, 1, 4])
    with pytest.raises(ValueError, match="gt_index"):
        target_ranks(np.zeros((3, 2)))  # more queries than items needs an explicit pairing


def test_ties_are_pessimistic() -> None:
    # The paired item ties with another: it is ranked after it.
    assert target_ranks(np.array([[0.5, 0.5, 0.1]])).tolist() == [2]
    # A constant-score (collapsed) model gets the worst rank for everything, not a perfect score.
    flat = np.zeros((5, 5))
    assert target_ranks(flat).tolist() == [5] * 5
    assert recall_at_k(flat, k=1) == 0.0
    # In ranked lists, tied non-relevant items come first.
    relevance = np.array([[True, False, False]])
    assert precision_at_k(np.array([[0.5, 0.5, 0.1]]), relevance, 1) == 0.0
    assert map_at_k(np.array([[0.5, 0.5, 0.1]]), relevance, 2) == pytest.approx(0.5)  # found at position 2
    # A tie group entirely inside the top k is re-ordered too: [0.9 rel, 0.9 irr] → irr, rel; then the
    # cut at 0.5 holds one relevant and one non-relevant item, and the non-relevant one takes slot 3.
    scores = np.array([[0.9, 0.9, 0.5, 0.5, 0.1]])
    relevance = np.array([[True, False, False, True, False]])
    assert precision_at_k(scores, relevance, 2) == pytest.approx(1 / 2)
    assert precision_at_k(scores, relevance, 3) == pytest.approx(1 / 3)
    assert map_at_k(scores, relevance, 3) == pytest.approx((1 / 2) / 2)


def test_tied_cut_takes_non_relevant_first() -> None:
    # Top-2 with four items tied at the cut, only one of them non-relevant: the slot after the best
    # item goes to the non-relevant tie whatever order torch.topk returned them in.
    scores = np.array([[1.0, 0.5, 0.5, 0.5, 0.5]])
    relevance = np.array([[False, True, True, False, True]])
    assert precision_at_k(scores, relevance, 2) == 0.0
    assert precision_at_k(scores, relevance, 3) == pytest.approx(1 / 3)
    assert map_at_k(scores, relevance, 3) == pytest.approx((1 / 3) / 3)


def test_precision_and_map_by_hand() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    relevance = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=bool)
    # Query 0 ranks 0..4 (hits at 1 and 3); query 1 ranks 4..0 (hit at 1).
    assert precision_at_k(scores, relevance, 2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert precision_at_k(scores, relevance, 5) == pytest.approx((2 / 5 + 1 / 5) / 2)
    # AP@2 of query 0: only the hit at 1 is inside, normaliser min(2, R=2) = 2.
    assert map_at_k(scores, relevance, 2) == pytest.approx((1 / 2 + 1) / 2)
    assert map_at_k(scores, relevance, 5) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    # k larger than the item count: precision still divides by k.
    assert precision_at_k(scores, relevance, 10) == pytest.approx((2 / 10 + 1 / 10) / 2)


def test_map_normaliser_is_min_k_relevant() -> None:
    # Five relevant items, all ranked first: a perfect AP@2, since the normaliser is min(2, 5).
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    relevance = np.array([[1, 1, 1, 1, 1, 0]], dtype=bool)
    assert map_at_k(scores, relevance, 2) == 1.0
    # One relevant item at rank 3: AP@3 = (1/3) / min(3, 1).
    assert map_at_k(scores, np.array([[0, 0, 1, 0, 0, 0]], dtype=bool), 3) == pytest.approx(1 / 3)


def test_queries_without_relevant_items_are_skipped() -> None:
    scores = np.array([[0.9, 0.1], [0.3, 0.4]])
    relevance = np.array([[True, False], [False, False]])
    assert precision_at_k(scores, relevance, 1) == 1.0  # query 1 is left out, not counted as 0
    assert map_at_k(scores, relevance, 2) == 1.0
    assert math.isnan(precision_at_k(scores, np.zeros((2, 2), dtype=bool), 1))


def test_negative_scores_are_ranked_normally() -> None:
    # torchmetrics would treat these relevant items as non-relevant because their scores are <= 0.
    scores = np.array([[-0.1, -0.5, -0.9]])
    relevance = np.array([[True, False, True]])
    assert precision_at_k(scores, relevance, 1) == 1.0
    assert map_at_k(scores, relevance, 3) == pytest.approx((1 + 2 / 3) / 2)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.array([[0.1, NAN]]), k=1)
    with pytest.raises(ValueError, match="shape"):
        precision_at_k(SCORES, np.ones((4, 3), dtype=bool), 1)
    with pytest.raises(ValueError, match="k must be"):
        map_at_k(SCORES, np.ones((4, 4), dtype=bool), 0)
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        label_relevance(np.full((1, 14), 2.0), np.zeros((1, 14)))
    with pytest.raises(ValueError, match="mode"):
        label_relevance(np.zeros((1, 14)), np.zeros((1, 14)), mode="overlap")  # type: ignore[arg-type]


def test_label_relevance_identical() -> None:
    labels = _labels((NO_FINDING,), (NO_FINDING,), (EDEMA,), (EDEMA, EFFUSION), ())
    labels[2, EFFUSION] = -1.0  # uncertain: not positive, so study 2 is still "Edema only"
    labels[2, NO_FINDING] = 0.0
    relevance = label_relevance(labels, labels, "identical")
    expected = np.array(
        [
            [1, 1, 0, 0, 0],  # two normal studies are identical (No Finding is a label) ...
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],  # ... Edema differs from Edema + Effusion
            [0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1],  # no positive at all: identical only to itself
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(relevance, expected)


def test_label_relevance_share_positive() -> None:
    labels_a = _labels((NO_FINDING,), (EDEMA,), ())
    labels_b = _labels((NO_FINDING,), (EDEMA, EFFUSION), (EFFUSION,), ())
    relevance = label_relevance(labels_a, labels_b, "share_positive")
    expected = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(relevance, expected)


@pytest.mark.parametrize("columns", [14, 70])  # 70: past one int64 bit code per study (the row path)
def test_label_relevance_matches_set_definition_on_random_labels(columns: int) -> None:
    rng = np.random.default_rng(3)
    labels = rng.choice([1.0, 0.0, -1.0, NAN], p=[0.3, 0.3, 0.2, 0.2], size=(40, columns))
    labels[:5] = labels[5:10]  # some identical sets even with 70 columns
    sets = [frozenset(np.flatnonzero(row == 1)) for row in labels]
    identical = label_relevance(labels, labels[:25], "identical")
    shared = label_relevance(labels, labels[:25], "share_positive")
    for i in range(40):
        for j in range(25):
            assert identical[i, j] == (sets[i] == sets[j])
            assert shared[i, j] == bool(sets[i] & sets[j])


@pytest.fixture(scope="module")
def random_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positive random scores (torchmetrics ignores items scoring <= 0), random relevance, a pairing."""
    rng = np.random.default_rng(7)
    scores = rng.uniform(0.01, 1.0, size=(30, 50))
    relevance = rng.random((30, 50)) < 0.1
    relevance[:4] = False  # some queries with nothing relevant
    return scores, relevance, rng.integers(0, 50, size=30)


def _flat(scores: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    indexes = torch.arange(scores.shape[0]).repeat_interleave(scores.shape[1])
    return torch.from_numpy(scores).reshape(-1), torch.from_numpy(target).reshape(-1), indexes


@pytest.mark.parametrize("k", [1, 5, 10])
def test_pairing_metrics_agree_with_torchmetrics(random_case: tuple, k: int) -> None:
    scores, _, gt = random_case
    one_hot = np.zeros(scores.shape, dtype=bool)
    one_hot[np.arange(len(gt)), gt] = True
    preds, target, indexes = _flat(scores, one_hot)
    expected_recall = RetrievalRecall(top_k=k)(preds, target, indexes=indexes)
    assert recall_at_k(scores, gt, k) == pytest.approx(float(expected_recall))
    assert mean_reciprocal_rank(scores, gt) == pytest.approx(
        float(RetrievalMRR()(preds, target, indexes=indexes))
    )


@pytest.mark.parametrize("k", [1, 5, 10])
def test_precision_agrees_with_torchmetrics(random_case: tuple, k: int) -> None:
    scores, relevance, _ = random_case
    preds, target, indexes = _flat(scores, relevance)
    expected = RetrievalPrecision(top_k=k, empty_target_action="skip")(preds, target, indexes=indexes)
    assert precision_at_k(scores, relevance, k) == pytest.approx(float(expected))


def test_map_agrees_with_torchmetrics_where_definitions_match(random_case: tuple) -> None:
    scores, relevance, _ = random_case
    preds, target, indexes = _flat(scores, relevance)
    # With k >= n_items every relevant item is inside the cut, so both normalisers are R.
    expected = RetrievalMAP(empty_target_action="skip")(preds, target, indexes=indexes)
    assert map_at_k(scores, relevance, scores.shape[1]) == pytest.approx(float(expected))


def test_map_at_k_differs_from_torchmetrics_only_by_normaliser(random_case: tuple) -> None:
    scores, relevance, _ = random_case
    k = 5
    rescaled = []
    for row_scores, row_relevance in zip(scores, relevance, strict=True):
        if not row_relevance.any():
            continue
        tm_ap = float(
            retrieval_average_precision(torch.from_numpy(row_scores), torch.from_numpy(row_relevance), k)
        )
        found = row_relevance[np.argsort(-row_scores)[:k]].sum()  # torchmetrics divides by this ...
        rescaled.append(tm_ap * found / min(k, row_relevance.sum()))  # ... we by min(k, R)
    assert map_at_k(scores, relevance, k) == pytest.approx(float(np.mean(rescaled)))
    # Found <= min(k, R), so torchmetrics' MAP@k is never lower, and here (some R > found) higher.
    preds, target, indexes = _flat(scores, relevance)
    torchmetrics_map = float(
        RetrievalMAP(top_k=k, empty_target_action="skip")(preds, target, indexes=indexes)
    )
    assert map_at_k(scores, relevance, k) < torchmetrics_map


@pytest.fixture(scope="module")
def embeddings() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    images = rng.normal(size=(60, 16)).astype(np.float32)
    texts = (images + rng.normal(scale=0.8, size=images.shape)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)  # L2-normalised, as models produce them
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    labels = rng.choice([1.0, 0.0, -1.0, NAN], p=[0.2, 0.5, 0.1, 0.2], size=(60, 14))
    labels[:10] = _labels(*[(NO_FINDING,)] * 10)  # a block of normal studies: many identical pairs
    return images, texts, labels


def test_retrieval_report_matches_the_metric_functions(embeddings: tuple) -> None:
    images, texts, labels = embeddings
    report = retrieval_report(images, texts, labels)
    assert set(report) == {"image_to_text", "text_to_image"}
    keys = [
        "recall@1",
        "recall@5",
        "recall@10",
        "median_rank",
        "mrr",
        "precision@5",
        "precision@5_best_possible",
        "precision@10",
        "precision@10_best_possible",
        "map@10",
    ]
    keys += [
        "precision@5_share_positive",
        "precision@5_share_positive_best_possible",
        "precision@10_share_positive",
        "precision@10_share_positive_best_possible",
        "map@10_share_positive",
    ]
    for direction, scores in (("image_to_text", images @ texts.T), ("text_to_image", texts @ images.T)):
        result = report[direction]
        assert list(result) == keys
        for k in (1, 5, 10):
            assert result[f"recall@{k}"] == pytest.approx(recall_at_k(scores, k=k))
        assert result["median_rank"] == pytest.approx(median_rank(scores))
        assert result["mrr"] == pytest.approx(mean_reciprocal_rank(scores))
        modes: tuple[tuple[RelevanceMode, str], ...] = (
            ("identical", ""),
            ("share_positive", "_share_positive"),
        )
        for mode, suffix in modes:
            relevance = label_relevance(labels, labels, mode)
            assert result[f"precision@5{suffix}"] == pytest.approx(precision_at_k(scores, relevance, 5))
            assert result[f"precision@10{suffix}"] == pytest.approx(precision_at_k(scores, relevance, 10))
            assert result[f"map@10{suffix}"] == pytest.approx(map_at_k(scores, relevance, 10))
            for k in (5, 10):  # what a ranking that puts every relevant item first scores
                perfect = precision_at_k(relevance.astype(np.float32), relevance, k)
                assert result[f"precision@{k}{suffix}_best_possible"] == pytest.approx(perfect)
                assert result[f"precision@{k}{suffix}"] <= perfect + 1e-9


def test_retrieval_report_perfect_and_shuffled_pairs(embeddings: tuple) -> None:
    images, _, labels = embeddings
    perfect = retrieval_report(images, images, labels)["image_to_text"]
    assert perfect["recall@1"] == 1.0 and perfect["median_rank"] == 1.0 and perfect["mrr"] == 1.0
    shuffled = retrieval_report(images, images[::-1], labels)["image_to_text"]
    assert shuffled["recall@1"] < 0.1
    with pytest.raises(ValueError, match="label rows"):
        retrieval_report(images, images, labels[:5])


def test_to_markdown_has_one_row_per_metric(embeddings: tuple) -> None:
    images, texts, labels = embeddings
    report = retrieval_report(images, texts, labels)
    lines = to_markdown(report).strip().splitlines()
    assert lines[0] == "| metric | image → text | text → image |"
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in lines[2:]}
    assert list(rows) == list(report["image_to_text"])
    assert float(rows["mrr"][0]) == pytest.approx(report["image_to_text"]["mrr"], abs=1e-4)
    assert float(rows["map@10"][1]) == pytest.approx(report["text_to_image"]["map@10"], abs=1e-4)


def _reference_order(row_scores: np.ndarray, row_relevance: np.ndarray) -> list[int]:
    """Item ids best first, tied items non-relevant first (the documented pessimistic order)."""
    return sorted(range(len(row_scores)), key=lambda j: (-row_scores[j], bool(row_relevance[j])))


def _reference_precision_and_ap(scores: np.ndarray, relevance: np.ndarray, k: int) -> tuple[float, float]:
    """Brute-force precision@k and mAP@k (normaliser min(k, R)), skipping queries with R = 0."""
    precisions, aps = [], []
    for row_scores, row_relevance in zip(scores, relevance, strict=True):
        n_relevant = int(row_relevance.sum())
        if n_relevant == 0:
            continue
        hits, ap = 0, 0.0
        for position, item in enumerate(_reference_order(row_scores, row_relevance)[:k], start=1):
            if row_relevance[item]:
                hits += 1
                ap += hits / position
        precisions.append(hits / k)
        aps.append(ap / min(k, n_relevant))
    if not precisions:
        return NAN, NAN
    return float(np.mean(precisions)), float(np.mean(aps))


def test_metrics_agree_with_a_brute_force_reference_on_tied_scores() -> None:
    """Few score levels (many ties, duplicate items), k past the pool, queries with nothing relevant."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        n_queries, n_items = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        scores = rng.integers(0, int(rng.integers(1, 4)), size=(n_queries, n_items)) / 4.0
        relevance = rng.random((n_queries, n_items)) < rng.random()
        gt = rng.integers(0, n_items, size=n_queries)  # may repeat: two queries, one item
        ranks = [
            1
            + sum(
                scores[q, j] > scores[q, gt[q]] or (scores[q, j] == scores[q, gt[q]] and j != gt[q])
                for j in range(n_items)
            )
            for q in range(n_queries)
        ]
        assert target_ranks(scores, gt).tolist() == ranks
        assert mean_reciprocal_rank(scores, gt) == pytest.approx(np.mean(1 / np.array(ranks)))
        assert median_rank(scores, gt) == pytest.approx(float(np.median(ranks)))
        for k in (1, 2, 3, n_items, n_items + 3):
            assert recall_at_k(scores, gt, k) == pytest.approx(np.mean(np.array(ranks) <= k))
            precision, average = _reference_precision_and_ap(scores, relevance, k)
            assert precision_at_k(scores, relevance, k) == pytest.approx(precision, nan_ok=True)
            assert map_at_k(scores, relevance, k) == pytest.approx(average, nan_ok=True)


def test_retrieval_report_agrees_with_the_reference_on_duplicate_studies() -> None:
    """Duplicate embeddings and repeated label sets, ks past the pool and in any order."""
    rng = np.random.default_rng(9)
    images = rng.integers(-1, 2, size=(9, 3)).astype(np.float32)
    texts = np.concatenate([images[:4], rng.integers(-1, 2, size=(5, 3))]).astype(np.float32)
    labels = rng.choice([1.0, 0.0, -1.0, NAN], p=[0.15, 0.5, 0.1, 0.25], size=(9, 14))
    ks = (12, 1, 3)
    report = retrieval_report(images, texts, labels, ks)
    for direction, scores in (("image_to_text", images @ texts.T), ("text_to_image", texts @ images.T)):
        result = report[direction]
        modes: tuple[tuple[RelevanceMode, str], ...] = (
            ("identical", ""),
            ("share_positive", "_share_positive"),
        )
        for mode, suffix in modes:
            relevance = label_relevance(labels, labels, mode)
            for k in (3, 12):
                precision, _ = _reference_precision_and_ap(scores, relevance, k)
                assert result[f"precision@{k}{suffix}"] == pytest.approx(precision, nan_ok=True)
            _, average = _reference_precision_and_ap(scores, relevance, 12)
            assert result[f"map@12{suffix}"] == pytest.approx(average, nan_ok=True)


def test_scores_in_another_byte_order_or_read_only_are_accepted() -> None:
    """Scores saved on a big-endian machine, or a read-only (memory-mapped) matrix, rank as usual."""
    rng = np.random.default_rng(2)
    scores = rng.random((6, 8))
    relevance = rng.random((6, 8)) < 0.4
    relevance[:, 0] = True
    expected = (
        precision_at_k(scores, relevance, 3),
        map_at_k(scores, relevance, 3),
        recall_at_k(scores, k=2),
    )
    swapped = scores.astype(scores.dtype.newbyteorder("S"))  # the other byte order
    read_only = scores.copy()
    read_only.setflags(write=False)
    for variant in (swapped, read_only):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns when it shares a read-only array
            got = (
                precision_at_k(variant, relevance, 3),
                map_at_k(variant, relevance, 3),
                recall_at_k(variant, k=2),
            )
        assert got == pytest.approx(expected)

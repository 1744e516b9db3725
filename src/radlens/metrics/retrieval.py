"""Cross-modal retrieval metrics on a similarity matrix, vectorised for 5k × 5k in well under a second.

``scores`` is (n_queries, n_items), higher = more similar. Two kinds of ground truth:

- a pairing ``gt_index`` (query ``i``'s one correct item; default ``i``), used by :func:`recall_at_k`,
  :func:`median_rank` and :func:`mean_reciprocal_rank`;
- a boolean ``relevance`` matrix (several relevant items per query, e.g. studies with the same
  CheXpert findings, see :func:`label_relevance`), used by :func:`precision_at_k` and :func:`map_at_k`.

Ties are broken pessimistically, so a model that scores everything alike cannot look good: the rank of
the paired item is the number of items scoring >= it (``1 + #greater + #other items tied``), and in a
ranked list tied items are ordered non-relevant first. Queries with no relevant item are left out of
the relevance-based means (they say nothing about the ranking; torchmetrics ``empty_target_action=
"skip"``); if every query is left out the mean is NaN.

Differences from ``torchmetrics.retrieval`` (checked in the tests): ``RetrievalMAP(top_k=k)`` divides
by the number of relevant items *found* in the top k, we divide by ``min(k, number relevant)`` (most
retrieval papers); and torchmetrics treats items with score <= 0 as non-relevant, we do not (cosine
similarities are often negative). Hand-written because torchmetrics loops over queries in Python
(seconds for 5k queries) and breaks ties arbitrarily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

RelevanceMode = Literal["identical", "share_positive"]


def _scores(scores: Any) -> np.ndarray:
    matrix = np.asarray(scores)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"scores must be a non-empty (n_queries, n_items) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("scores contain NaN or infinite values")
    if not np.issubdtype(matrix.dtype, np.floating):
        return matrix.astype(np.float64)
    # torch.from_numpy (for topk) refuses another byte order (scores saved on another machine).
    return matrix if matrix.dtype.isnative else matrix.astype(matrix.dtype.newbyteorder("="))


def _gt(gt_index: Any, shape: tuple[int, ...]) -> np.ndarray:
    n_queries, n_items = shape
    if gt_index is None:
        if n_queries > n_items:
            raise ValueError("gt_index is required when there are more queries than items")
        return np.arange(n_queries)
    gt = np.asarray(gt_index, dtype=np.int64).reshape(-1)
    if len(gt) != n_queries or gt.min() < 0 or gt.max() >= n_items:
        raise ValueError(f"gt_index must hold {n_queries} item indices in [0, {n_items})")
    return gt


def target_ranks(scores: Any, gt_index: Any = None) -> np.ndarray:
    """1-based rank of each query's paired item: the number of items scoring >= it (ties pessimistic)."""
    matrix = _scores(scores)
    gt = _gt(gt_index, matrix.shape)
    target = matrix[np.arange(len(gt)), gt]
    return (matrix >= target[:, None]).sum(axis=1)


def recall_at_k(scores: Any, gt_index: Any = None, k: int = 1) -> float:
    """Fraction of queries whose paired item is ranked in the top ``k``."""
    return float((target_ranks(scores, gt_index) <= k).mean())


def median_rank(scores: Any, gt_index: Any = None) -> float:
    """Median rank of the paired item (1 is perfect; the mean of the middle two for an even count)."""
    return float(np.median(target_ranks(scores, gt_index)))


def mean_reciprocal_rank(scores: Any, gt_index: Any = None) -> float:
    """Mean of 1 / rank of the paired item."""
    return float((1.0 / target_ranks(scores, gt_index)).mean())


def _top(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids of the ``min(k, n_items)`` best items per row, best first (torch.topk: O(n))."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    array = np.ascontiguousarray(matrix)
    if not array.flags.writeable:  # a read-only (e.g. memory-mapped) array: torch warns on sharing it
        array = array.copy()
    values, ids = torch.topk(torch.from_numpy(array), min(k, matrix.shape[1]), dim=1)
    return values.numpy(), ids.numpy()


def _relevance(relevance: Any, shape: tuple[int, ...]) -> np.ndarray:
    rel = np.asarray(relevance)
    if rel.shape != shape:
        raise ValueError(f"relevance shape {rel.shape} differs from scores shape {shape}")
    return rel if rel.dtype == np.bool_ else rel.astype(bool)


def _ranked(
    matrix: np.ndarray, rel: np.ndarray, top_scores: np.ndarray, top_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Relevance of the top items in pessimistic ranked order, and each query's relevant count.

    Items tied with the last score of the top list are re-counted over the whole row so that, at
    the cut, non-relevant tied items take the remaining slots first.
    """
    top_rel = np.take_along_axis(rel, top_ids, axis=1)
    # Within the list, order ties non-relevant first (lexsort: last key is primary).
    order = np.lexsort((top_rel, -top_scores), axis=1)
    top_rel = np.take_along_axis(top_rel, order, axis=1)
    cut = top_scores[:, -1:]
    above = (top_scores > cut).sum(axis=1, keepdims=True)  # every item above the cut is in the list
    tied_irrelevant = ((matrix == cut) & ~rel).sum(axis=1, keepdims=True)
    slot = np.arange(top_scores.shape[1])[None, :]
    return np.where(slot < above, top_rel, slot - above >= tied_irrelevant), rel.sum(axis=1)


def _ranked_relevance(scores: Any, relevance: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    matrix = _scores(scores)
    rel = _relevance(relevance, matrix.shape)
    return _ranked(matrix, rel, *_top(matrix, k))


def _average_precision(ranked: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-query AP@k from pessimistically ranked relevance: Σ P@i·rel_i / min(k, R)."""
    precision = np.cumsum(ranked, axis=1) / np.arange(1, ranked.shape[1] + 1)
    return (precision * ranked).sum(axis=1) / np.maximum(np.minimum(k, n_relevant), 1)


def _mean_over_relevant(values: np.ndarray, n_relevant: np.ndarray) -> float:
    has = n_relevant > 0
    return float(values[has].mean()) if has.any() else float("nan")


def precision_at_k(scores: Any, relevance: Any, k: int) -> float:
    """Mean over queries of (relevant items in the top ``k``) / ``k``."""
    ranked, n_relevant = _ranked_relevance(scores, relevance, k)
    return _mean_over_relevant(ranked.sum(axis=1) / k, n_relevant)


def map_at_k(scores: Any, relevance: Any, k: int) -> float:
    """Mean average precision at ``k``.

    ``AP@k = (1 / min(k, R)) · Σ_{i<=k} P@i · rel_i`` with ``R`` the query's number of relevant
    items, so a perfect ranking scores 1 even when ``R > k``.
    """
    ranked, n_relevant = _ranked_relevance(scores, relevance, k)
    return _mean_over_relevant(_average_precision(ranked, n_relevant, k), n_relevant)


def label_relevance(labels_a: Any, labels_b: Any, mode: RelevanceMode = "identical") -> np.ndarray:
    """Boolean (n_a, n_b) relevance from CheXpert label arrays (1 / 0 / -1 / NaN per label).

    Only 1 is positive (uncertain -1, negative 0 and blank NaN are not). ``"identical"``: the two
    studies have exactly the same set of positive labels. "No Finding" is one of the labels, so two
    normal studies are identical (and a normal study is not identical to one with a finding); two
    studies with no positive label at all are identical too. ``"share_positive"``: at least one label
    is positive in both (two normals share "No Finding"; a study with no positive shares nothing).
    """
    a = _labels(labels_a)
    b = _labels(labels_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"label arrays have {a.shape[1]} and {b.shape[1]} columns")
    pos_a, pos_b = a == 1, b == 1
    if mode not in ("identical", "share_positive"):
        raise ValueError(f"unknown relevance mode {mode!r}: use 'identical' or 'share_positive'")
    if a.shape[1] > 63:  # too many labels for one int64 bit code per study
        if mode == "share_positive":
            return (pos_a.astype(np.float32) @ pos_b.T.astype(np.float32)) > 0
        return (pos_a[:, None, :] == pos_b[None, :, :]).all(axis=2)
    # One bit per label: comparing two int64 codes is ~10x faster than comparing label rows.
    weights = np.left_shift(np.int64(1), np.arange(a.shape[1], dtype=np.int64))
    code_a, code_b = pos_a @ weights, pos_b @ weights
    if mode == "share_positive":
        return (code_a[:, None] & code_b[None, :]) != 0
    return code_a[:, None] == code_b[None, :]


def _labels(labels: Any) -> np.ndarray:
    array = np.asarray(labels, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"labels must be an (n, n_labels) array, got shape {array.shape}")
    valid = np.isnan(array) | np.isin(array, (1.0, 0.0, -1.0))
    if not valid.all():
        raise ValueError("labels must be 1, 0, -1 or NaN")
    return array


def _direction(scores: np.ndarray, relevance: dict[str, np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    ranks = (scores >= np.diagonal(scores)[:, None]).sum(axis=1)  # target_ranks, inputs already checked
    result = {f"recall@{k}": float((ranks <= k).mean()) for k in ks}
    result["median_rank"] = float(np.median(ranks))
    result["mrr"] = float((1.0 / ranks).mean())
    top = max(ks)
    top_scores, top_ids = _top(scores, top)  # shared by both relevance modes
    for mode, rel in relevance.items():
        suffix = "" if mode == "identical" else f"_{mode}"
        ranked, n_relevant = _ranked(scores, rel, top_scores, top_ids)
        for k in ks:
            if k > 1:
                hits = ranked[:, :k].sum(axis=1)
                result[f"precision@{k}{suffix}"] = _mean_over_relevant(hits / k, n_relevant)
                # The best any ranking can score: a query with fewer than k relevant items cannot fill k.
                best = np.minimum(n_relevant, k) / k
                result[f"precision@{k}{suffix}_best_possible"] = _mean_over_relevant(best, n_relevant)
        average = _average_precision(ranked, n_relevant, top)
        result[f"map@{top}{suffix}"] = _mean_over_relevant(average, n_relevant)
    return result


def retrieval_report(
    image_emb: Any, text_emb: Any, labels: Any, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """Image→text and text→image metrics for paired embeddings (row ``i`` of each is one study).

    Scores are inner products (cosine for L2-normalised embeddings). Each direction has
    ``recall@k`` (k in ``ks``), ``median_rank``, ``mrr``, ``precision@k`` (k in ``ks``, k > 1) and
    ``map@max(ks)`` under "identical" label relevance, and the same label-aware metrics with a
    ``_share_positive`` suffix under the looser "share_positive" relevance. Beside each precision,
    ``..._best_possible`` is what a perfect ranking would score: in a pool where some label sets have
    fewer than k members, even it cannot reach 1.
    """
    images = np.asarray(image_emb, dtype=np.float32)
    texts = np.asarray(text_emb, dtype=np.float32)
    if images.ndim != 2 or images.shape != texts.shape:
        raise ValueError(
            f"image {images.shape} and text {texts.shape} embeddings must be same-shape matrices"
        )
    label_array = _labels(labels)
    if len(label_array) != len(images):
        raise ValueError(f"{len(label_array)} label rows for {len(images)} embeddings")
    if not ks or min(ks) < 1:
        raise ValueError("ks must be positive integers")
    scores = images @ texts.T
    if not np.isfinite(scores).all():
        raise ValueError("embeddings contain NaN or infinite values")
    # Same labels on both sides, so each relevance matrix is symmetric and serves both directions.
    relevance = {
        mode: label_relevance(label_array, label_array, mode) for mode in ("identical", "share_positive")
    }
    return {
        "image_to_text": _direction(scores, relevance, ks),
        "text_to_image": _direction(np.ascontiguousarray(scores.T), relevance, ks),
    }


def to_markdown(report: dict[str, dict[str, float]]) -> str:
    """The report as a Markdown table: one row per metric, one column per direction."""
    directions = list(report)
    header = "| metric | " + " | ".join(name.replace("_to_", " → ") for name in directions) + " |"
    lines = [header, "|---" * (len(directions) + 1) + "|"]
    for metric in report[directions[0]]:
        cells = []
        for name in directions:
            value = report[name].get(metric, float("nan"))
            cells.append(f"{value:.1f}" if metric == "median_rank" else f"{value:.4f}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

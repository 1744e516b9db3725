"""Evaluation metrics: cross-modal retrieval (recall@k, ranks, MRR, label-aware precision and mAP)."""

from radlens.metrics.retrieval import (
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

__all__ = [
    "label_relevance",
    "map_at_k",
    "mean_reciprocal_rank",
    "median_rank",
    "precision_at_k",
    "recall_at_k",
    "retrieval_report",
    "target_ranks",
    "to_markdown",
]

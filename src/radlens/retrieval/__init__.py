"""Retrieval: FAISS vector indexes, the on-disk image/report index, building it, searching and evaluating it."""

from radlens.retrieval.build import BuildSummary, build_index
from radlens.retrieval.evaluate import RetrievalEvaluation, evaluate_retrieval
from radlens.retrieval.index import (
    INDEX_KINDS,
    IndexKind,
    RetrievalIndex,
    SearchFilter,
    VectorIndex,
    default_nlist,
    metadata_row,
)
from radlens.retrieval.retriever import Retriever, SearchHit, SearchResults

__all__ = [
    "INDEX_KINDS",
    "BuildSummary",
    "IndexKind",
    "RetrievalEvaluation",
    "RetrievalIndex",
    "Retriever",
    "SearchFilter",
    "SearchHit",
    "SearchResults",
    "VectorIndex",
    "build_index",
    "default_nlist",
    "evaluate_retrieval",
    "metadata_row",
]

"""Retrieval: FAISS vector indexes and the on-disk image/report index with its metadata."""

from radlens.retrieval.index import (
    INDEX_KINDS,
    IndexKind,
    RetrievalIndex,
    SearchFilter,
    VectorIndex,
    default_nlist,
    metadata_row,
)

__all__ = [
    "INDEX_KINDS",
    "IndexKind",
    "RetrievalIndex",
    "SearchFilter",
    "VectorIndex",
    "default_nlist",
    "metadata_row",
]

"""radlens.retrieval."""

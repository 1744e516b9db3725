"""radlens.explain."""

"""radlens.caption."""

"""radlens.web."""

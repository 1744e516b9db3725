"""radlens.metrics."""

"""radlens.train."""

"""radlens.generate."""

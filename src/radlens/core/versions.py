"""Versions of what a run used, written beside every output so results can be traced."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("radlens", "torch", "numpy", "pillow", "pydantic", "transformers", "faiss-cpu")


def collect_versions() -> dict[str, str]:
    """Python, platform, CPU count and the versions of the key packages (``absent`` if not installed)."""
    found: dict[str, str] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
    }
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found

"""radlens: vision-language and generative models for radiology, with explanations that can be checked.

Research use only: radlens is not a medical device and must not be used for diagnosis.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("radlens")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

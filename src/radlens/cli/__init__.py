"""The ``radlens`` command line. ``main`` is the console-script entry point."""

from radlens.cli.app import app, main

__all__ = ["app", "main"]

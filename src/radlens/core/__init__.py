"""Shared plumbing every radlens module uses: errors, configs, atomic output, progress, versions.

Public names only; the rest of radlens imports from here, never from the private files.
"""

from radlens.core.config import Config, load_config, read_config_file, write_run_metadata
from radlens.core.errors import InputError, RadlensError
from radlens.core.io import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_file,
    atomic_write_text,
    check_writable_folder,
    prepare_output_dir,
)
from radlens.core.progress import is_quiet, progress, set_quiet
from radlens.core.versions import collect_versions

__all__ = [
    "Config",
    "InputError",
    "RadlensError",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_file",
    "atomic_write_text",
    "check_writable_folder",
    "collect_versions",
    "is_quiet",
    "load_config",
    "prepare_output_dir",
    "progress",
    "read_config_file",
    "set_quiet",
    "write_run_metadata",
]

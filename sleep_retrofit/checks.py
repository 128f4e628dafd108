"""Small validation helpers shared across the package."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["is_int", "nearest_existing", "writable_directory"]


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML's yes/no and Python's True are ints too)."""
    return isinstance(value, int) and not isinstance(value, bool)


def nearest_existing(path: Path) -> Path:
    """`path` itself or its nearest ancestor that exists (where a new `path` would be created)."""
    while not path.exists():
        path = path.parent
    return path


def writable_directory(directory: Path) -> bool:
    """Whether a directory can really be created inside `directory`: os.access says yes for root
    under /proc or /sys, or on a read-only mount, where mkdir then fails; so try it."""
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        return False
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sleep-retrofit-probe-", dir=directory))
    except OSError:
        return False
    return True

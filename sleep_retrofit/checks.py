"""Small validation helpers shared across the package."""

from __future__ import annotations

from typing import Any

__all__ = ["is_int"]


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML's yes/no and Python's True are ints too)."""
    return isinstance(value, int) and not isinstance(value, bool)

"""The user-facing error of convert, info, generate and loading, and how a library error is
shown in it (its first line)."""

from __future__ import annotations

__all__ = ["ConvertError", "first_line"]


class ConvertError(ValueError):
    """A bad conversion (or info / generate) request; the message is one line naming the problem
    and the valid choices. The CLI prints it and exits with status 2."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

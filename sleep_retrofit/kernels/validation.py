"""Argument checks shared by the kernels: bad input gets a ValueError naming the argument
and the expected shape, instead of a broadcasting error from deep inside torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_float(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def check_shape(
    name: str, tensor: torch.Tensor, expected: Sequence[int | str | None], *, what: str = ""
) -> None:
    """Check `tensor.shape` against `expected`; an int entry must match exactly, a str or None
    entry is a free dimension named in the message (e.g. ("B", "T", 4, 16))."""
    check_float(name, tensor)
    pretty = "[" + ", ".join(str(e) for e in expected) + "]"
    if tensor.dim() != len(expected) or any(
        isinstance(e, int) and tensor.shape[i] != e for i, e in enumerate(expected)
    ):
        suffix = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape {pretty}{suffix}, got {list(tensor.shape)}")

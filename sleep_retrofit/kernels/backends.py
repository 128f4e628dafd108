"""Choosing between the pure-PyTorch kernels and the CUDA libraries, per call.

Why per call: transformers picks its linear-attention kernels once at import time with no
device check, so a CPU machine with flash-linear-attention installed crashes inside Triton.
Here every public kernel asks `cuda_kernel(...)` with the tensor it is about to process:
CPU tensors always take the torch path, CUDA tensors take the library function when the
package imports, and a package that is installed but broken (no compiled extension, wrong
CUDA) is treated as absent. Imports happen lazily, never at module top level.

Set the environment variable ``SLEEP_RETROFIT_DISABLE_CUDA_KERNELS=1`` to force the torch
path everywhere (useful to compare the two on a GPU).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from functools import cache
from typing import Any

import torch

# name used by callers -> (module path, attribute)
CUDA_KERNELS: dict[str, tuple[str, str]] = {
    "chunk_gated_delta_rule": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"),
    "fused_recurrent_gated_delta_rule": ("fla.ops.gated_delta_rule", "fused_recurrent_gated_delta_rule"),
    "mamba_chunk_scan_combined": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
    "selective_state_update": ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update"),
    "causal_conv1d_fn": ("causal_conv1d", "causal_conv1d_fn"),
    "causal_conv1d_update": ("causal_conv1d", "causal_conv1d_update"),
    "flash_attn_func": ("flash_attn", "flash_attn_func"),
}


@cache
def _import_kernel(name: str) -> Callable[..., Any] | None:
    module_name, attr = CUDA_KERNELS[name]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except Exception:  # noqa: BLE001 - a broken install must behave like a missing one
        return None


def cuda_kernel(name: str, *tensors: torch.Tensor | None) -> Callable[..., Any] | None:
    """The CUDA library function `name` if every given tensor is on a CUDA device and the
    library imports; otherwise None (the caller then runs its torch implementation)."""
    if name not in CUDA_KERNELS:
        raise KeyError(f"unknown CUDA kernel {name!r}; known: {sorted(CUDA_KERNELS)}")
    if os.environ.get("SLEEP_RETROFIT_DISABLE_CUDA_KERNELS", "") not in ("", "0"):
        return None
    present = [t for t in tensors if t is not None]
    if not present or not all(t.is_cuda for t in present):
        return None
    return _import_kernel(name)


def clear_kernel_cache() -> None:
    """Forget import results (tests swap fake packages in and out of sys.modules)."""
    _import_kernel.cache_clear()

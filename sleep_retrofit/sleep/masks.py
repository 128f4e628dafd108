"""Attention masks for sleep: which keys a query may see, as an additive bias.

Built here rather than with transformers' mask helpers because the key set is ours: the kept
window of earlier tokens (sliding eviction), the current chunk, or nothing but the chunk
during consolidation, each with its own absolute positions and padding.
"""

from __future__ import annotations

import torch


def attention_bias(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_valid: torch.Tensor,
    *,
    window: int | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """[B, 1, Tq, Tk] additive bias: 0 where visible, the dtype's minimum elsewhere.

    A key is visible to a query when it is not later (causal), not padding, and when `window`
    is set, fewer than `window` positions back (the query itself counts as one). A query always
    sees its own key: padded queries would otherwise have no visible key, and their NaN outputs
    would poison later layers (their outputs are never read, their state updates are masked).

    query_positions: [Tq] absolute positions; key_positions: [Tk]; key_valid: [B, Tk] bool.
    """
    q = query_positions[:, None]
    k = key_positions[None, :]
    visible = k <= q
    if window is not None:
        visible = visible & (k > q - window)
    visible = visible[None] & key_valid[:, None, :]
    visible = visible | (q == k)[None]
    bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    bias.masked_fill_(~visible, torch.finfo(dtype).min)
    return bias[:, None]

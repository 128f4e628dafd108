"""Mamba2 state-space duality (SSD) scan: chunked, sequential reference and one-token step.

Layout (mamba_ssm's): x [B, T, H, P]; dt [B, T, H]; A [H] (negative); Bm, Cm [B, T, G, N]
with H divisible by G, head h reading group h // (H // G); D [H] or None; dt_bias [H] or None.
The time step actually used is dt' = softplus(dt + dt_bias) if dt_softplus else dt + dt_bias
(dt_bias = 0 when None). State S [B, H, P, N], float32. Per token t and head h:

    S <- exp(dt'_t * A) * S + dt'_t * x_t B_t^T        (x_t [P], B_t [N])
    y_t = S C_t + D * x_t

Chunked form (ssd_chunk_scan): cut time into chunks of `chunk_size` tokens. Inside a chunk the
recurrence unrolls into a masked quadratic form, like attention with a decay mask:

    y_i = sum_{j<=i in chunk} (C_i . B_j) exp(sum_{j<k<=i} a_k) dt'_j x_j
          + exp(sum_{k<=i in chunk} a_k) S_start C_i + D x_i,          a_k = dt'_k * A

with the decay sums taken as segment sums of log decays (exact sums, no differences of large
cumulative sums, so long chunks keep float32 precision). Across chunks only the state S is
passed, in a loop over chunks. T need not be a multiple of chunk_size: the tail is padded with
dt' = 0, which neither decays nor writes the state.

Numerics: everything runs in float32, or in float64 when an input is float64 (then the state
is float64 too, which keeps torch.autograd.gradcheck usable); outputs are cast to x.dtype.
Autograd flows through every input, initial_state included. On CUDA, ssd_chunk_scan
dispatches to mamba_ssm's mamba_chunk_scan_combined, and ssd_step (inference only, no
gradients needed) to selective_state_update, when they import (backends.py).

    ssd_chunk_scan(x, dt, A, Bm, Cm, *, D=None, dt_bias=None, dt_softplus=False,
        initial_state=None, output_final_state=False, chunk_size=64)
        -> (y [B,T,H,P], final_state [B,H,P,N] float32 or None)
    ssd_sequential_scan(...same...) -> same          (token loop; chunk_size is ignored)
    ssd_step(x [B,H,P], dt [B,H], A [H], Bm [B,G,N], Cm [B,G,N], state [B,H,P,N] or None, *,
        D=None, dt_bias=None, dt_softplus=False) -> (y [B,H,P], new_state [B,H,P,N] float32)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import cuda_kernel
from .validation import check_shape

__all__ = ["ssd_chunk_scan", "ssd_sequential_scan", "ssd_step"]

_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- checks


def _check_heads_and_groups(num_heads: int, num_groups: int) -> None:
    if num_groups < 1 or num_heads % num_groups != 0:
        raise ValueError(
            f"Bm/Cm have G={num_groups} groups but x has H={num_heads} heads: H must be divisible by G "
            f"(head h reads group h // (H // G))"
        )


def _check_per_head(
    A: torch.Tensor, D: torch.Tensor | None, dt_bias: torch.Tensor | None, heads: int
) -> None:
    check_shape("A", A, (heads,), what="[H], one per head")
    if D is not None:
        check_shape("D", D, (heads,), what="[H], one per head")
    if dt_bias is not None:
        check_shape("dt_bias", dt_bias, (heads,), what="[H], one per head")


def _check_scan_inputs(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> tuple[int, int, int, int, int, int]:
    check_shape("x", x, ("B", "T", "H", "P"), what="batch, time, heads, head dim")
    batch, seq_len, heads, head_dim = x.shape
    check_shape("dt", dt, (batch, seq_len, heads), what="[B, T, H] from x")
    check_shape("Bm", Bm, (batch, seq_len, "G", "N"), what="[B, T, G, N] with B, T from x")
    groups, state_dim = Bm.shape[2], Bm.shape[3]
    check_shape("Cm", Cm, (batch, seq_len, groups, state_dim), what="[B, T, G, N], same as Bm")
    _check_heads_and_groups(heads, groups)
    _check_per_head(A, D, dt_bias, heads)
    if initial_state is not None:
        check_shape("initial_state", initial_state, (batch, heads, head_dim, state_dim), what="[B, H, P, N]")
    return batch, seq_len, heads, head_dim, groups, state_dim


# ----------------------------------------------------------------------------- helpers


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float32, or float64 if an input is float64."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _time_step(
    dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """The dt' the recurrence uses: softplus(dt + dt_bias) or dt + dt_bias, in `dtype`."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    return F.softplus(dt) if dt_softplus else dt


def _segment_sum(log_decay: torch.Tensor) -> torch.Tensor:
    """[..., L] -> [..., L, L] with out[..., i, j] = sum_{j<k<=i} log_decay[k] for j <= i and
    -inf above the diagonal, so exp() gives the causal decay mask. Each entry is a direct sum
    (a cumsum over a masked copy) rather than cumsum[i] - cumsum[j], which would cancel
    catastrophically once the cumulative sums grow large."""
    length = log_decay.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=log_decay.device)
    # terms[..., k, j] = log_decay[k] where k > j, else 0; cumsum over k sums (j, i].
    terms = log_decay.unsqueeze(-1).expand(*log_decay.shape, length)
    terms = terms.masked_fill(~torch.tril(ones, diagonal=-1), 0.0)
    sums = terms.cumsum(dim=-2)
    return sums.masked_fill(~torch.tril(ones), float("-inf"))


def _pad_time(tensor: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad dim 1 (time) at the end by `pad` steps."""
    if pad == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], pad, *tensor.shape[2:])], dim=1)


# ----------------------------------------------------------------------------- chunked scan


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked SSD scan (the training / prefill path), see the module docstring.

    Returns (y [B, T, H, P] in x.dtype, final_state [B, H, P, N] float32 or None).
    Work is O(T * chunk_size) inside chunks plus O(T / chunk_size) state updates; memory
    holds the [B, H, T, chunk_size] decay masks and one state per chunk.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    batch, seq_len, heads, head_dim, groups, state_dim = _check_scan_inputs(
        x, dt, A, Bm, Cm, D, dt_bias, initial_state
    )

    out = _ssd_chunk_scan_cuda(
        x, dt, A, Bm, Cm, D, dt_bias, dt_softplus, initial_state, output_final_state, chunk_size
    )
    if out is not None:
        return out

    dtype = _compute_dtype(x, dt, A, Bm, Cm, D, dt_bias, initial_state)
    heads_per_group = heads // groups
    num_chunks = -(-seq_len // chunk_size)
    pad = num_chunks * chunk_size - seq_len
    state = (
        initial_state.to(dtype)
        if initial_state is not None
        else x.new_zeros(batch, heads, head_dim, state_dim, dtype=dtype)
    )

    # Padding after the softplus: dt' = 0 on padded steps means decay 1 and no write, so the
    # final state is exactly the state after the last real token.
    step = _pad_time(_time_step(dt, dt_bias, dt_softplus, dtype), pad)  # [B, T', H]
    log_decay = step * A.to(dtype)  # [B, T', H], <= 0 for A < 0

    # Chunked views; heads split as (G, R) so B/C are shared by a group without copies.
    chunk_shape = (batch, num_chunks, chunk_size)
    xc = _pad_time(x.to(dtype), pad).reshape(*chunk_shape, groups, heads_per_group, head_dim)
    Bc = _pad_time(Bm.to(dtype), pad).reshape(*chunk_shape, groups, state_dim)
    Cc = _pad_time(Cm.to(dtype), pad).reshape(*chunk_shape, groups, state_dim)
    step_c = step.reshape(*chunk_shape, heads).transpose(2, 3)  # [B, nC, H, L]
    log_decay_c = log_decay.reshape(*chunk_shape, heads).transpose(2, 3)  # [B, nC, H, L]

    # 1. Inside each chunk: y_diag_i = sum_{j<=i} (C_i . B_j) decay(j->i) dt'_j x_j.
    decay = torch.exp(_segment_sum(log_decay_c))  # [B, nC, H, L(i), L(j)]
    scores = torch.einsum("bclgn,bcsgn->bcgls", Cc, Bc).unsqueeze(3)  # [B, nC, G, 1, L, L]
    scores = scores * (decay * step_c.unsqueeze(-2)).reshape(
        batch, num_chunks, groups, heads_per_group, chunk_size, chunk_size
    )
    y = torch.einsum("bcgrls,bcsgrp->bclgrp", scores, xc)

    # 2. What each chunk alone writes into the state by its end: decay(j->end) dt'_j x_j B_j^T.
    to_end = (decay[..., -1, :] * step_c).reshape(batch, num_chunks, groups, heads_per_group, chunk_size)
    chunk_writes = torch.einsum("bcgrs,bcsgn,bcsgrp->bcgrpn", to_end, Bc, xc).reshape(
        batch, num_chunks, heads, head_dim, state_dim
    )

    # 3. Pass the state across chunks (the only loop), keeping the state at each chunk start.
    chunk_decay = torch.exp(log_decay_c.sum(-1))  # [B, nC, H]
    start_states = []
    for c in range(num_chunks):
        start_states.append(state)
        state = chunk_decay[:, c, :, None, None] * state + chunk_writes[:, c]
    if num_chunks > 0:
        starts = torch.stack(start_states, dim=1).reshape(
            batch, num_chunks, groups, heads_per_group, head_dim, state_dim
        )
        # 4. The carried-in state's contribution: exp(sum_{k<=i} a_k) S_start C_i.
        from_start = torch.exp(log_decay_c.cumsum(-1)).transpose(2, 3)  # [B, nC, L, H]
        y_carried = torch.einsum("bclgn,bcgrpn->bclgrp", Cc, starts)
        y = y + y_carried * from_start.reshape(*chunk_shape, groups, heads_per_group, 1)

    y = y.reshape(batch, num_chunks * chunk_size, heads, head_dim)[:, :seq_len]
    if D is not None:
        y = y + D.to(dtype)[:, None] * x.to(dtype)
    return y.to(x.dtype), (state if output_final_state else None)


def _ssd_chunk_scan_cuda(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """mamba_chunk_scan_combined on CUDA tensors (it has autograd, initial_states included),
    or None when it is absent or the arguments are outside what we have seen it handle
    (power-of-two chunk sizes >= 16, half/bfloat16/float32 inputs)."""
    scan_fn = cuda_kernel("mamba_chunk_scan_combined", x, dt, A, Bm, Cm, D, dt_bias, initial_state)
    if (
        scan_fn is None
        or x.shape[1] == 0
        or chunk_size < 16
        or chunk_size & (chunk_size - 1)
        or any(t.dtype not in _CUDA_DTYPES for t in (x, dt, A, Bm, Cm))
    ):
        return None
    result = scan_fn(
        x.contiguous(),
        dt.contiguous(),
        A.float(),
        Bm.to(x.dtype).contiguous(),
        Cm.to(x.dtype).contiguous(),
        chunk_size,
        D=None if D is None else D.float(),
        z=None,
        dt_bias=None if dt_bias is None else dt_bias.float(),
        initial_states=None if initial_state is None else initial_state.float().contiguous(),
        dt_softplus=dt_softplus,
        return_final_states=output_final_state,
    )
    if output_final_state:
        y, final_state = result
        return y.to(x.dtype), final_state.float()
    return result.to(x.dtype), None


# ----------------------------------------------------------------------------- sequential reference


def ssd_sequential_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The recurrence one token at a time (torch on every device): the reference the chunked
    scan is tested against. Same arguments and results as ssd_chunk_scan; `chunk_size` is
    accepted so the two are interchangeable, and ignored."""
    del chunk_size
    batch, seq_len, heads, head_dim, groups, state_dim = _check_scan_inputs(
        x, dt, A, Bm, Cm, D, dt_bias, initial_state
    )
    dtype = _compute_dtype(x, dt, A, Bm, Cm, D, dt_bias, initial_state)
    step = _time_step(dt, dt_bias, dt_softplus, dtype)
    heads_per_group = heads // groups
    Bh = Bm.to(dtype).repeat_interleave(heads_per_group, dim=2)  # [B, T, H, N]
    Ch = Cm.to(dtype).repeat_interleave(heads_per_group, dim=2)
    xf, Af = x.to(dtype), A.to(dtype)
    state = (
        initial_state.to(dtype)
        if initial_state is not None
        else x.new_zeros(batch, heads, head_dim, state_dim, dtype=dtype)
    )
    outputs = []
    for t in range(seq_len):
        y_t, state = _recurrence_step(xf[:, t], step[:, t], Af, Bh[:, t], Ch[:, t], state)
        outputs.append(y_t)
    y = torch.stack(outputs, dim=1) if outputs else xf.new_zeros(batch, 0, heads, head_dim)
    if D is not None:
        y = y + D.to(dtype)[:, None] * xf
    return y.to(x.dtype), (state if output_final_state else None)


def _recurrence_step(
    x: torch.Tensor,
    step: torch.Tensor,
    A: torch.Tensor,
    Bh: torch.Tensor,
    Ch: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S <- exp(dt' A) S + dt' x B^T; y = S C (without the D skip). x [B,H,P], step [B,H],
    Bh/Ch [B,H,N] (already per head), state [B,H,P,N]."""
    decay = torch.exp(step * A)[..., None, None]  # [B, H, 1, 1]
    state = decay * state + (step[..., None] * x)[..., None] * Bh[:, :, None, :]
    return torch.einsum("bhpn,bhn->bhp", state, Ch), state


# ----------------------------------------------------------------------------- one-token step


def ssd_step(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    state: torch.Tensor | None,
    *,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token: x [B, H, P], dt [B, H], A [H], Bm/Cm [B, G, N], state [B, H, P, N]
    (None = zeros). Returns (y [B, H, P] in x.dtype, new_state [B, H, P, N] float32); the
    input state is not modified."""
    check_shape("x", x, ("B", "H", "P"), what="one token: batch, heads, head dim")
    batch, heads, head_dim = x.shape
    check_shape("dt", dt, (batch, heads), what="[B, H] from x")
    check_shape("Bm", Bm, (batch, "G", "N"), what="[B, G, N] with B from x")
    groups, state_dim = Bm.shape[1], Bm.shape[2]
    check_shape("Cm", Cm, (batch, groups, state_dim), what="[B, G, N], same as Bm")
    _check_heads_and_groups(heads, groups)
    _check_per_head(A, D, dt_bias, heads)
    if state is not None:
        check_shape("state", state, (batch, heads, head_dim, state_dim), what="[B, H, P, N]")

    out = _ssd_step_cuda(x, dt, A, Bm, Cm, state, D, dt_bias, dt_softplus)
    if out is not None:
        return out

    dtype = _compute_dtype(x, dt, A, Bm, Cm, D, dt_bias, state)
    if state is None:
        state = x.new_zeros(batch, heads, head_dim, state_dim, dtype=dtype)
    heads_per_group = heads // groups
    y, new_state = _recurrence_step(
        x.to(dtype),
        _time_step(dt, dt_bias, dt_softplus, dtype),
        A.to(dtype),
        Bm.to(dtype).repeat_interleave(heads_per_group, dim=1),
        Cm.to(dtype).repeat_interleave(heads_per_group, dim=1),
        state.to(dtype),
    )
    if D is not None:
        y = y + D.to(dtype)[:, None] * x.to(dtype)
    return y.to(x.dtype), new_state


def _ssd_step_cuda(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    state: torch.Tensor | None,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """selective_state_update on CUDA tensors, for inference only: it writes the state in
    place and has no autograd, so any input needing a gradient takes the torch path.

    Its multi-head form wants per-(head, channel) parameters: A [H, P, N], dt [B, H, P],
    dt_bias and D [H, P]. We pass stride-0 expansions (which it recognises as tied across
    the head dim) and always a dt_bias (zeros when absent: some versions read its strides
    unconditionally)."""
    update_fn = cuda_kernel("selective_state_update", x, dt, A, Bm, Cm, state, D, dt_bias)
    tensors = [t for t in (x, dt, A, Bm, Cm, state, D, dt_bias) if t is not None]
    if (
        update_fn is None
        or any(t.dtype not in _CUDA_DTYPES for t in (x, dt, A, Bm, Cm))
        or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    ):
        return None
    batch, heads, head_dim = x.shape
    state_dim = Bm.shape[-1]
    new_state = (
        x.new_zeros(batch, heads, head_dim, state_dim, dtype=torch.float32)
        if state is None
        else state.float().clone().contiguous()
    )
    bias = dt_bias.float() if dt_bias is not None else x.new_zeros(heads, dtype=torch.float32)
    y = update_fn(
        new_state,
        x.contiguous(),
        dt.unsqueeze(-1).expand(batch, heads, head_dim),
        A.float()[:, None, None].expand(heads, head_dim, state_dim),
        Bm.to(x.dtype).contiguous(),
        Cm.to(x.dtype).contiguous(),
        D=None if D is None else D.float()[:, None].expand(heads, head_dim),
        z=None,
        dt_bias=bias[:, None].expand(heads, head_dim),
        dt_softplus=dt_softplus,
    )
    return y.to(x.dtype), new_state

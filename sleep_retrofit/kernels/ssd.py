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

with the decay sums exp(gamma_i - gamma_j) taken from cumulative log decays summed in float64
inside each chunk (so no float32 cancellation however large they grow). Across chunks only the
state S is passed, in a loop over chunks. T need not be a multiple of chunk_size: the tail is
padded with dt' = 0, which neither decays nor writes the state.

CPU layout: chunks are processed a bounded group at a time (about 1 MiB per temporary, see
_GROUP_ELEMENTS) and batch elements in blocks whose states stay in cache, so memory beyond the
inputs and outputs does not grow with T. The heads sharing a B/C group are laid side by side:
C B^T is computed once per group, and the state read C S^T and write X^T B are one wide matmul
per group and chunk. Decays below exp(-61) (float32) are rounded up to it, to keep the
arithmetic out of the (slow) denormal range; see _log_decay_floor.

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

import math

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


def _pad_time(tensor: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad dim 1 (time) at the end by `pad` steps."""
    if pad == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], pad, *tensor.shape[2:])], dim=1)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------- chunked scan

# The chunked scan builds its intra-chunk tensors (decay masks, scores, x in per-head layout)
# for a group of chunks at a time, about this many elements per tensor (1 MiB of float32).
# Small groups keep the working set in cache and let the allocator reuse memory instead of
# mapping fresh pages, and bound the transient memory at any T. The group size does not
# change the result.
_GROUP_ELEMENTS = 1 << 18

# ... and runs the scan over blocks of whole batch elements whose states hold about this many
# elements (2 MiB of float32; always at least one batch element, since splitting the heads of
# a group would narrow the state matmuls). Each chunk streams the block's states through two
# matmuls, which then stay in cache. Blocking does not change the result either.
_BLOCK_STATE_ELEMENTS = 1 << 19


def _to_chunks(tensor: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[B, n*L, S, ...] -> contiguous [n, B*S, L, ...]: chunk index outermost, then (batch,
    group) as the matmul batch, then the chunk's tokens."""
    batch, length, streams = tensor.shape[:3]
    tensor = tensor.reshape(batch, length // chunk_size, chunk_size, streams, *tensor.shape[3:])
    tensor = tensor.permute(1, 0, 3, 2, *range(4, tensor.dim()))  # [n, B, S, L, ...]
    return tensor.reshape(length // chunk_size, batch * streams, chunk_size, *tensor.shape[4:])


def _time_slice(tensor: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """tensor[:, start:stop], zero-padded at the end where stop runs past T (the last chunk)."""
    return _pad_time(tensor[:, start:stop], max(0, stop - tensor.shape[1]))


def _log_decay_floor(dtype: torch.dtype) -> float:
    """Log decays are clamped from below at 0.7 * log(smallest normal) (-61 in float32): the
    decays they would give are > 26 orders of magnitude below the unit decay every output row
    and state has, so far below rounding, and keeping them (and their products) normal numbers
    avoids x86's slow denormal arithmetic (exp of -100 or -inf ran 6-15x slower than of -50)."""
    return 0.7 * math.log(torch.finfo(dtype).tiny)


def _chunk_scan_block(
    x: torch.Tensor,
    step: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    state: torch.Tensor,
    chunk_size: int,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The chunked scan (without the D skip) for one block of batch elements: x [b, T, H, P],
    step = dt' [b, T, H], A [H], Bm/Cm [b, T, G, N], state [b, H, P, N], all in the compute
    dtype. T is padded up to whole chunks here, a group of chunks at a time.

    Returns (y [b, T', H, P], final state [b, H, P, N]) with T' = T rounded up to whole chunks.
    With `out` (a [b, T', H, P] tensor; no autograd) y is written there, None is returned in
    its place, and temporaries (the state included) are updated in place.
    """
    batch, seq_len, heads, head_dim = x.shape
    groups, state_dim = Bm.shape[2], Bm.shape[3]
    per_group = heads // groups
    L = chunk_size
    num_chunks = -(-seq_len // L)
    chunks_per_group = max(1, min(num_chunks, _GROUP_ELEMENTS // (batch * heads * L * max(L, head_dim))))
    floor = _log_decay_floor(x.dtype)
    in_place = out is not None

    # Heads of a B/C group side by side: the state as [b*G, R*P, N] and x as [.., L, R*P], so
    # that reading the state (C S^T) and writing it (X^T B) are one wide matmul per group.
    state = state.reshape(batch * groups, per_group * head_dim, state_dim)
    outputs = []  # per chunk, [b, L, H, P] (autograd only)
    for first in range(0, num_chunks, chunks_per_group):
        n = min(chunks_per_group, num_chunks - first)
        start, stop = first * L, (first + n) * L
        # Padded steps have dt' = 0: decay 1 and no write, so the final state is exact.
        step_c = _to_chunks(_time_slice(step, start, stop).view(batch, n * L, groups, per_group), L)
        # dt' x, chunk-major [n, b*G, L, R, P], in one pass (dt' folded in as it is copied)
        x_c = _time_slice(x, start, stop).view(batch, n, L, groups, per_group, head_dim)
        x_c = x_c.permute(1, 0, 3, 2, 4, 5) * step_c.view(n, batch, groups, L, per_group, 1)
        x_c = x_c.reshape(n, batch * groups, L, per_group, head_dim)
        B_c = _to_chunks(_time_slice(Bm, start, stop), L)  # [n, b*G, L, N]
        C_c = _to_chunks(_time_slice(Cm, start, stop), L)

        # Cumulative log decay inside each chunk, summed in float64: gamma_i - gamma_j is then
        # the segment sum sum_{j<k<=i} a_k to float32 rounding even where gamma itself is large
        # (a float32 difference of two large cumulative sums would cancel catastrophically).
        log_decay = step_c.view(n, batch, groups, L, per_group).to(torch.float64) * A.view(
            groups, 1, per_group
        ).to(torch.float64)
        gamma64 = log_decay.cumsum(3).view(n, batch * groups, L, per_group).transpose(2, 3)  # [n, bG, R, L]
        if in_place:  # rounded to the compute dtype as it is written: one pass over [.., L, L]
            gamma_diff = torch.sub(
                gamma64[..., :, None],
                gamma64[..., None, :],
                out=x.new_empty(n, batch * groups, per_group, L, L),
            )
        else:
            gamma_diff = (gamma64[..., :, None] - gamma64[..., None, :]).to(x.dtype)
        # decay(j->i) = exp(gamma_i - gamma_j), the (positive) entries above the diagonal
        # zeroed before the exp so they cannot overflow; C B^T is masked to j <= i below.
        decay = gamma_diff.tril_().clamp_min_(floor).exp_()  # [n, b*G, R, L, L]
        to_end = (gamma64[..., -1:] - gamma64).to(x.dtype).clamp_min(floor).exp()  # decay(j->end)
        from_start = gamma64.to(x.dtype).clamp_min(floor).exp()  # decay(chunk start->i), [n, bG, R, L]
        chunk_decay = from_start[..., -1, None, None]  # [n, b*G, R, 1, 1]
        from_start = from_start.transpose(2, 3)[..., None]  # [n, b*G, L, R, 1]

        # 1. Inside each chunk: y_i = sum_{j<=i} (C_i . B_j) decay(j->i) dt'_j x_j, with the
        # causal C B^T computed once per group and shared by its heads.
        scores = (C_c @ B_c.transpose(-1, -2)).tril_()[:, :, None] * decay  # [n, b*G, R, L, L]
        x_heads = x_c.transpose(2, 3).reshape(n, batch * heads, L, head_dim)
        y_intra = scores.reshape(n, batch * heads, L, L) @ x_heads
        y_intra = y_intra.view(n, batch * groups, per_group, L, head_dim).transpose(2, 3)  # [n, bG, L, R, P]

        # 2. What each chunk writes into the state by its end: (decay(j->end) dt'_j x_j)^T B_j.
        writes = (x_c * to_end.transpose(2, 3)[..., None]).view(n, batch * groups, L, per_group * head_dim)

        # 3. Across chunks (the only loop): y_i += decay(start->i) S_start C_i, then pass S on.
        for i in range(n):
            carried = (C_c[i] @ state.transpose(-1, -2)).view(batch * groups, L, per_group, head_dim)
            grouped_state = state.view(batch * groups, per_group, head_dim, state_dim)
            if in_place:
                chunk = slice((first + i) * L, (first + i + 1) * L)
                chunk_out = out[:, chunk].view(batch, L, groups, per_group, head_dim).transpose(1, 2)
                split = (batch, groups)
                torch.addcmul(
                    y_intra[i].unflatten(0, split),
                    carried.unflatten(0, split),
                    from_start[i].unflatten(0, split),
                    out=chunk_out,
                )
                grouped_state.mul_(chunk_decay[i])
                state.baddbmm_(writes[i].transpose(-1, -2), B_c[i])
            else:
                y_chunk = torch.addcmul(y_intra[i], carried, from_start[i])  # [b*G, L, R, P]
                y_chunk = y_chunk.view(batch, groups, L, heads // groups, head_dim).transpose(1, 2)
                outputs.append(y_chunk.reshape(batch, L, heads, head_dim))
                decayed = (grouped_state * chunk_decay[i]).view_as(state)
                state = torch.baddbmm(decayed, writes[i].transpose(-1, -2), B_c[i])

    y = torch.cat(outputs, dim=1) if out is None else None
    return y, state.reshape(batch, heads, head_dim, state_dim)


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
    Work is O(T * chunk_size) inside chunks plus O(T / chunk_size) state updates. Chunks are
    processed a bounded group at a time, so beyond the inputs and outputs memory does not grow
    with T (a few MiB of temporaries without autograd; with autograd, what backward needs).
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
    state = (
        initial_state.to(dtype)
        if initial_state is not None
        else x.new_zeros(batch, heads, head_dim, state_dim, dtype=dtype)
    )
    if seq_len == 0:
        return x.new_zeros(batch, 0, heads, head_dim), (state if output_final_state else None)

    # A sequence shorter than a chunk is one chunk of its own length (no padding up to
    # chunk_size: sleep's chunks of L = 16-32 tokens would do several times the work).
    chunk_size = min(chunk_size, seq_len)
    out_dtype = x.dtype
    step = _time_step(dt, dt_bias, dt_softplus, dtype)  # [B, T, H]
    x, Bm, Cm, A = x.to(dtype), Bm.to(dtype), Cm.to(dtype), A.to(dtype)  # (no copies when already dtype)

    per_block = max(1, _BLOCK_STATE_ELEMENTS // (heads * head_dim * state_dim))
    blocks = [slice(b, min(b + per_block, batch)) for b in range(0, batch, per_block)]
    if _needs_grad(x, step, A, Bm, Cm, initial_state):
        results = [
            _chunk_scan_block(x[bs], step[bs], A, Bm[bs], Cm[bs], state[bs], chunk_size) for bs in blocks
        ]
        y = torch.cat([y_block for y_block, _ in results], dim=0)
        state = torch.cat([s_block for _, s_block in results], dim=0)
    else:
        y = x.new_empty(batch, -(-seq_len // chunk_size) * chunk_size, heads, head_dim)
        final_state = torch.empty_like(state)
        for bs in blocks:
            # (a copy of the state: the block updates it in place)
            _, final_state[bs] = _chunk_scan_block(
                x[bs], step[bs], A, Bm[bs], Cm[bs], state[bs].clone(), chunk_size, out=y[bs]
            )
        state = final_state

    y = y[:, :seq_len]
    if D is not None:
        y = y + D.to(dtype)[:, None] * x
    return y.to(out_dtype), (state if output_final_state else None)


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

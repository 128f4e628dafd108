"""Gated delta rule (GDN / JetBlock fast weights): chunked, recurrent and one-token step.

Layout (flash-linear-attention's): q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H];
g is the log decay (<= 0). State S [B, H, K, V], always float32. Per token and head:
    S <- exp(g_t) * S
    u  = beta_t * (v_t - S^T k_t)
    S <- S + k_t u^T
    o_t = S^T (scale * q_t)
With use_qk_l2norm_in_kernel, q <- q / sqrt(sum q^2 + 1e-6) and likewise k (fla's in-kernel
formula, not F.normalize). scale defaults to K ** -0.5. Outputs are cast to v.dtype.

Signatures:
    chunk_gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None,
        output_final_state=False, use_qk_l2norm_in_kernel=False, chunk_size=64)
        -> (o [B,T,H,V], final_state [B,H,K,V] float32 or None)
    recurrent_gated_delta_rule(...same...) -> same
    gated_delta_rule_step(q [B,H,K], k [B,H,K], v [B,H,V], g [B,H], beta [B,H], state [B,H,K,V] or None,
        *, scale=None, use_qk_l2norm_in_kernel=False) -> (o [B,H,V], new_state [B,H,K,V])

All three compute the same function; `chunk_gated_delta_rule` is the fast one for prefill and
training, `recurrent_gated_delta_rule` is the readable token-by-token reference, and
`gated_delta_rule_step` advances a decoding state by one token. Internal math is float32
whatever the input dtype, and autograd flows through every input including initial_state.

On CUDA tensors the chunked and recurrent functions hand over to flash-linear-attention
(`fla.ops.gated_delta_rule`) when it imports and the call is one fla supports (see
`_fla_chunk_supported` / `_fla_recurrent_supported`); otherwise, and always on CPU, they run
the torch code below.

The chunked algorithm (the "WY" / UT-transform form of Yang et al., "Gated Delta Networks").
Cut the sequence into chunks of C tokens; inside a chunk let gamma_i = g_1 + ... + g_i (the
cumulative log decay from the chunk start) and S0 the state entering the chunk. Unrolling the
recurrence,
    S_i = exp(gamma_i) S0 + sum_{j<=i} exp(gamma_i - gamma_j) k_j u_j^T
    u_i = beta_i v_i - beta_i exp(gamma_i) S0^T k_i - sum_{j<i} beta_i exp(gamma_i - gamma_j) (k_i . k_j) u_j
so the rows U of u solve the unit-lower-triangular system (I + A) U = beta V - (beta exp(gamma) K) S0
with A_ij = beta_i exp(gamma_i - gamma_j) k_i . k_j (j < i). Hence U = U0 - W S0 where
    U0 = (I + A)^-1 (beta V),   W = (I + A)^-1 (beta exp(gamma) K)
depend only on the chunk's own tokens: they are computed for every chunk at once. What is left
sequential is one small step per chunk (not per token):
    U   = U0 - W S0
    O   = (scale Q exp(gamma)) S0 + (scale Q K^T * D) U        D_ij = exp(gamma_i - gamma_j), j <= i
    S_C = exp(gamma_C) S0 + (K exp(gamma_C - gamma))^T U
"""

from __future__ import annotations

import torch

from .backends import cuda_kernel
from .validation import check_float, check_shape

__all__ = ["chunk_gated_delta_rule", "recurrent_gated_delta_rule", "gated_delta_rule_step"]

# fla's in-kernel L2 norm: x / sqrt(sum x^2 + eps).
L2NORM_EPS = 1e-6

# The chunked kernel builds its intra-chunk matrices for a group of chunks at a time: about
# this many (token, head) pairs per group, i.e. intermediates of a few MiB. Small groups keep
# the working set in cache and let the allocator reuse memory instead of mapping fresh pages
# (on CPU, tens-of-MiB temporaries ran ~3x slower, page faults dominating); they also bound
# the transient memory at long contexts. The group size does not change the result.
_GROUP_TOKEN_HEADS = 4096

# ... and runs the scan block by block over (batch, head) pairs whose states hold about this
# many float32 elements (1 MiB): the sequential part streams every state through four matmuls
# per chunk, and a block's states then stay in a core's L2 cache (B=8 JetBlock: ~20% faster
# than one block for the whole batch). Blocking does not change the result either.
_BLOCK_STATE_ELEMENTS = 1 << 18


# ----------------------------------------------------------------------------- validation


def _check_sequence_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> None:
    check_float("q", q)
    if q.dim() != 4:
        raise ValueError(f"q must have shape [B, T, H, K], got {list(q.shape)}")
    B, T, H, K = q.shape
    check_shape("k", k, (B, T, H, K), what="[B, T, H, K], same as q")
    check_float("v", v)
    if v.dim() != 4:
        raise ValueError(f"v must have shape [B, T, H, V], got {list(v.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(
            f"v must have shape [B, T, H, V] = [{B}, {T}, {H}, V] matching q's batch, length and "
            f"head count, got {list(v.shape)}"
        )
    V = v.shape[3]
    check_shape("g", g, (B, T, H), what="[B, T, H]")
    check_shape("beta", beta, (B, T, H), what="[B, T, H]")
    if initial_state is not None:
        check_shape("initial_state", initial_state, (B, H, K, V), what="[B, H, K, V]")


def _check_options(scale: float | None, chunk_size: int | None = None) -> None:
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a float or None, got {type(scale).__name__}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def _prepare_qk(
    q: torch.Tensor, k: torch.Tensor, use_qk_l2norm_in_kernel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k in float32, L2-normalised if asked (the query scale is applied by the caller)."""
    q, k = q.float(), k.float()
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
    return q, k


def _default_scale(scale: float | None, head_k_dim: int) -> float:
    return head_k_dim**-0.5 if scale is None else float(scale)


# ----------------------------------------------------------------------------- CUDA dispatch


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _fla_chunk_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    # fla's chunk kernel asserts q, k, v share one dtype and that it is not float32.
    return q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16)


def _fla_recurrent_supported(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    h0: torch.Tensor | None,
) -> bool:
    # fla's fused recurrent kernel is forward-only in several released versions (its backward
    # raises NotImplementedError), so calls that will be differentiated stay on torch.
    return q.dtype == k.dtype == v.dtype and not _needs_grad(q, k, v, g, beta, h0)


def _call_fla(fn, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel):
    o, final_state = fn(
        q,
        k,
        v,
        g.float(),
        beta.to(q.dtype),
        scale=_default_scale(scale, q.shape[-1]),
        initial_state=None if initial_state is None else initial_state.float().contiguous(),
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
    )
    final_state = final_state.float() if output_final_state and final_state is not None else None
    return o.to(v.dtype), final_state


# ----------------------------------------------------------------------------- one token


def _step_math(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token, all float32: q (scaled) [B,H,K], k [B,H,K], v [B,H,V], decay = exp(g) and
    beta [B,H], state [B,H,K,V] -> (o [B,H,V], new state)."""
    state = state * decay[..., None, None]
    predicted_v = torch.einsum("bhk,bhkv->bhv", k, state)  # S^T k
    u = beta[..., None] * (v - predicted_v)
    state = state + k[..., :, None] * u[..., None, :]
    o = torch.einsum("bhk,bhkv->bhv", q, state)
    return o, state


def gated_delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance the gated delta rule by one token.

    Args:
        q, k: [B, H, K]. v: [B, H, V]. g (log decay, <= 0), beta: [B, H].
        state: [B, H, K, V] (any float dtype; used as float32) or None for a zero state.
        scale: query scale, default K ** -0.5.
        use_qk_l2norm_in_kernel: L2-normalise q and k first (fla's formula).

    Returns:
        (o [B, H, V] in v.dtype, new_state [B, H, K, V] float32).
    """
    check_float("q", q)
    if q.dim() != 3:
        raise ValueError(f"q must have shape [B, H, K], got {list(q.shape)}")
    B, H, K = q.shape
    check_shape("k", k, (B, H, K), what="[B, H, K], same as q")
    check_float("v", v)
    if v.dim() != 3 or tuple(v.shape[:2]) != (B, H):
        raise ValueError(f"v must have shape [B, H, V] = [{B}, {H}, V] matching q, got {list(v.shape)}")
    V = v.shape[2]
    check_shape("g", g, (B, H), what="[B, H]")
    check_shape("beta", beta, (B, H), what="[B, H]")
    if state is not None:
        check_shape("state", state, (B, H, K, V), what="[B, H, K, V]")
    _check_options(scale)

    q32, k32 = _prepare_qk(q, k, use_qk_l2norm_in_kernel)
    q32 = q32 * _default_scale(scale, K)
    if state is None:
        state = q32.new_zeros(B, H, K, V)
    o, new_state = _step_math(q32, k32, v.float(), g.float().exp(), beta.float(), state.float())
    return o.to(v.dtype), new_state


# ----------------------------------------------------------------------------- recurrent


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token gated delta rule (the reference; O(T) sequential steps).

    Same arguments and results as `chunk_gated_delta_rule` (chunk_size is accepted for a
    uniform signature and ignored). On CUDA, forward-only calls use fla's fused recurrent kernel.
    """
    _check_sequence_inputs(q, k, v, g, beta, initial_state)
    _check_options(scale, chunk_size)
    fla_fn = cuda_kernel("fused_recurrent_gated_delta_rule", q, k, v, g, beta, initial_state)
    if fla_fn is not None and _fla_recurrent_supported(q, k, v, g, beta, initial_state):
        return _call_fla(
            fla_fn, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel
        )

    B, T, H, K = q.shape
    V = v.shape[-1]
    q32, k32 = _prepare_qk(q, k, use_qk_l2norm_in_kernel)
    q32 = q32 * _default_scale(scale, K)
    v32, decay, beta32 = v.float(), g.float().exp(), beta.float()
    state = q32.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(T):
        o_t, state = _step_math(q32[:, t], k32[:, t], v32[:, t], decay[:, t], beta32[:, t], state)
        outputs.append(o_t)
    o = torch.stack(outputs, dim=1) if outputs else v32.new_zeros(B, 0, H, V)
    return o.to(v.dtype), (state if output_final_state else None)


# ----------------------------------------------------------------------------- chunked


def _to_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[B, n*C, H, ...] -> contiguous [n, B*H, C, ...]: chunk index outermost so that the
    sequential loop reads one contiguous block per chunk, (batch, head) as the matmul batch."""
    B, T, H = x.shape[:3]
    x = x.reshape(B, T // chunk_size, chunk_size, H, *x.shape[3:])
    x = x.permute(1, 0, 3, 2, *range(4, x.dim()))  # [n, B, H, C, ...]
    return x.reshape(T // chunk_size, B * H, chunk_size, *x.shape[4:])


def _state_blocks(B: int, H: int, K: int, V: int) -> list[tuple[slice, slice]]:
    """(batch, head) slices covering [B, H] whose states hold about _BLOCK_STATE_ELEMENTS each:
    whole batch elements when a batch element's heads fit, else head ranges of one element."""
    if H * K * V <= _BLOCK_STATE_ELEMENTS:
        per_block = max(1, _BLOCK_STATE_ELEMENTS // (H * K * V))
        return [(slice(b, min(b + per_block, B)), slice(0, H)) for b in range(0, B, per_block)]
    n_head_blocks = -(-H * K * V // _BLOCK_STATE_ELEMENTS)
    heads = -(-H // n_head_blocks)
    return [(slice(b, b + 1), slice(h, min(h + heads, H))) for b in range(B) for h in range(0, H, heads)]


def _chunk_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    scale: float,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The WY-form chunked scan on float32 inputs (q, k already L2-normalised if asked).

    q, k [B,T,H,K]; v [B,T,H,V]; g, beta [B,T,H]; state [B,H,K,V] -> (o [B,T,H,V], state).
    Runs block by block over (batch, head) pairs (see _state_blocks).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    padding = (-T) % chunk_size
    if padding:
        # Padded tokens have k = v = 0, beta = 0 and g = 0: they leave the state untouched
        # (u = 0, decay 1), so the final state is exact; their outputs are dropped below.
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, padding)) for x in (q, k, v))
        g, beta = (torch.nn.functional.pad(x, (0, 0, 0, padding)) for x in (g, beta))

    blocks = _state_blocks(B, H, K, V)
    if _needs_grad(q, k, v, g, beta, state):
        # Autograd: the blocks are split off (batch, then heads), not indexed: the backward of
        # a split is one concatenation, where indexing scatters every block's gradient into a
        # zero-filled tensor of the full input's size (with many heads, the bulk of backward).
        rows: list[tuple[int, list[int]]] = []  # (batch size, its head block sizes), in order
        for bs, hs in blocks:
            if hs.start == 0:
                rows.append((bs.stop - bs.start, []))
            rows[-1][1].append(hs.stop - hs.start)
        o_rows, state_rows = [], []
        row_inputs = zip(*(x.split([b for b, _ in rows]) for x in (q, k, v, g, beta, state)), strict=True)
        for (_, heads), (*sequences, row_state) in zip(rows, row_inputs, strict=True):
            results = [
                _chunk_block(*parts, state_part, scale, chunk_size)
                for *parts, state_part in zip(
                    *(x.split(heads, dim=2) for x in sequences), row_state.split(heads, dim=1), strict=True
                )
            ]
            o_rows.append(torch.cat([o_block for o_block, _ in results], dim=2))
            state_rows.append(torch.cat([s_block for _, s_block in results], dim=1))
        o, state = torch.cat(o_rows, dim=0), torch.cat(state_rows, dim=0)
    else:
        # Inference: every block writes its outputs and final state straight into one buffer.
        o = q.new_empty(B, T + padding, H, V)
        final_state = torch.empty_like(state)
        for bs, hs in blocks:
            _, final_state[bs, hs] = _chunk_block(
                q[bs, :, hs],
                k[bs, :, hs],
                v[bs, :, hs],
                g[bs, :, hs],
                beta[bs, :, hs],
                state[bs, hs],
                scale,
                chunk_size,
                out=o[bs, :, hs],
            )
        state = final_state
    return o[:, :T].contiguous(), state


def _chunk_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    scale: float,
    C: int,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The chunked scan for one block of (batch, head) pairs; T a multiple of the chunk C.

    Returns (o [B,T,H,V], final state [B,H,K,V]); with `out` (a [B,T,H,V] view, no autograd)
    the outputs are written there and None is returned in their place.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    n_chunks = T // C
    group = max(1, min(n_chunks, _GROUP_TOKEN_HEADS // (B * H * C)))
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()

    state = state.reshape(B * H, K, V)
    outputs = []  # per chunk, [B, C, H, V] (autograd only)
    for first in range(0, n_chunks, group):
        tokens = slice(first * C, min(first + group, n_chunks) * C)
        q_c, k_c, v_c = (_to_chunks(x[:, tokens], C) for x in (q, k, v))  # [n, BH, C, K|V]
        beta_c = _to_chunks(beta[:, tokens], C)  # [n, BH, C]
        # Cumulative log decay inside each chunk, summed in float64: gamma_i - gamma_j of two
        # nearby tokens is then exact to float32 rounding even when gamma itself is large.
        gamma64 = _to_chunks(g[:, tokens], C).double().cumsum(-1)  # [n, BH, C]
        gamma_diff = (gamma64[..., :, None] - gamma64[..., None, :]).float()  # [n, BH, C, C]
        gamma_to_end = (gamma64[..., -1:] - gamma64).float()  # [n, BH, C]
        gamma = gamma64.float()
        # exp(gamma_i - gamma_j) for j <= i, 0 above the diagonal (masked before exp: no overflow)
        decay_ij = gamma_diff.masked_fill_(~causal, float("-inf")).exp_()

        # Intra-chunk WY representation: (I + A) [W | U0] = [beta exp(gamma) K | beta V]. One
        # triangular solve against the identity gives T = (I + A)^-1, then two batched matmuls;
        # on CPU this is ~2x faster than solving for the K + V right-hand sides directly.
        # (solve_triangular reads only A's strictly lower triangle, and differentiates only it)
        A = (k_c @ k_c.transpose(-1, -2)) * decay_ij * beta_c[..., None]
        eye = torch.eye(C, dtype=A.dtype, device=A.device).expand_as(A)
        t_beta = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True) * beta_c[..., None, :]
        gamma_exp = gamma.exp()
        w = t_beta @ (k_c * gamma_exp[..., None])  # [n, BH, C, K]
        u0 = t_beta @ v_c  # [n, BH, C, V]

        # causal (Q K^T * decay) including the diagonal, and Q decayed since the chunk start
        # (how each token reads the carried-in state); the query scale is folded into both.
        attn = (q_c @ k_c.transpose(-1, -2)) * (decay_ij * scale)  # [n, BH, C, C]
        q_decayed = q_c * (gamma_exp * scale)[..., None]
        chunk_decay = gamma_exp[..., -1, None, None]  # [n, BH, 1, 1]
        # k_j decayed from its token to the chunk end, transposed for the state update
        k_to_end_t = (k_c * gamma_to_end.exp()[..., None]).transpose(-1, -2)

        for i in range(q_c.shape[0]):
            u = torch.baddbmm(u0[i], w[i], state, alpha=-1.0)  # U0 - W S0
            o_chunk = torch.baddbmm(q_decayed[i] @ state, attn[i], u).view(B, H, C, V).transpose(1, 2)
            state = torch.baddbmm(state * chunk_decay[i], k_to_end_t[i], u)
            if out is None:
                outputs.append(o_chunk)
            else:
                out[:, (first + i) * C : (first + i + 1) * C] = o_chunk

    o = torch.cat(outputs, dim=1) if out is None else None
    return o, state.reshape(B, H, K, V)


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunk-parallel gated delta rule: parallel inside chunks of `chunk_size` tokens,
    sequential across chunks.

    Args:
        q, k: [B, T, H, K]. v: [B, T, H, V]. g (log decay, <= 0), beta: [B, T, H].
        scale: query scale, default K ** -0.5.
        initial_state: [B, H, K, V] state before the first token (used as float32), or None
            for zeros. Differentiable.
        output_final_state: also return the state after the last token.
        use_qk_l2norm_in_kernel: L2-normalise q and k first (fla's formula).
        chunk_size: tokens per chunk (any positive int; T need not be a multiple). Changes
            speed only, not the result (up to float32 rounding). Ignored by fla on CUDA. On
            CPU, 32 ran ~10% faster than 64 at JetBlock dims; 128+ is slower (BENCHMARKS.md).

    Returns:
        (o [B, T, H, V] in v.dtype, final_state [B, H, K, V] float32 or None).
    """
    _check_sequence_inputs(q, k, v, g, beta, initial_state)
    _check_options(scale, chunk_size)
    fla_fn = cuda_kernel("chunk_gated_delta_rule", q, k, v, g, beta, initial_state)
    if fla_fn is not None and _fla_chunk_supported(q, k, v):
        return _call_fla(
            fla_fn, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel
        )

    B, T, H, K = q.shape
    V = v.shape[-1]
    state = q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    if T == 0:
        return v.new_zeros(B, 0, H, V), (state if output_final_state else None)
    # The query scale is applied per chunk inside the kernel (on cache-resident blocks), not
    # here as one more pass over the whole of q.
    q32, k32 = _prepare_qk(q, k, use_qk_l2norm_in_kernel)
    scale = _default_scale(scale, K)
    # A sequence shorter than a chunk is one chunk of its own length: padding it up to
    # chunk_size would multiply the intra-chunk work (sleep's chunks are often L = 16-32).
    chunk_size = min(chunk_size, T)
    o, state = _chunk_torch(q32, k32, v.float(), g.float(), beta.float(), state, scale, chunk_size)
    return o.to(v.dtype), (state if output_final_state else None)

"""Causal depthwise convolutions with carried state: static weights (GDN short conv, Mamba2)
and dynamic per-token generated kernels (Jet-Nemotron's value conv).

Layout: x [B, T, D] (channels last, like the rest of the model); conv state [B, D, W-1]
holding the last W-1 inputs, oldest first (zeros at sequence start). Static weight [D, W].
Dynamic kernels [B, T, D, W]. Output index convention:

    y_t[d] = bias[d] + sum_i w[d, i] * x_{t-(W-1)+i}[d]        (i = 0 .. W-1)

i.e. the LAST tap multiplies the current token, as torch Conv1d with left padding W-1, the
causal_conv1d library and Jet-Nemotron's dynamic conv (kernels[b, t, d, W-1] weighs x_t).
Inputs before the sequence start come from the state, so feeding a sequence in pieces and
passing the state along gives the same outputs as one call. The final state is the last W-1
columns of [initial_state, x]: when T < W-1 part of the initial state shifts through.

Padding: `mask` [B, T] (1 = real token, 0 = padding) zeroes padded inputs before the conv,
so they add nothing to any output and count as zeros in the carried state. For left padding
from a zero state (a fresh batch) this is exactly the unpadded result; with a non-zero
initial_state the zeros push min(#pad, W-1) of its columns out, so callers that continue a
state across a left-padded batch should not rely on those columns.

Numerics: the torch path accumulates in float32 (or in the input dtype if wider); outputs
and states are returned in x.dtype. On CUDA the static conv dispatches to causal_conv1d's
`causal_conv1d_fn` / `causal_conv1d_update` when that package imports (see backends.py);
the dynamic conv is torch on every device.

    causal_conv1d(x, weight, bias=None, *, activation=None, initial_state=None,
        output_final_state=False, mask=None) -> (y [B,T,D], final_state [B,D,W-1] or None)
    causal_conv1d_step(x [B,D], state [B,D,W-1] or None, weight, bias=None, *, activation=None)
        -> (y [B,D], new_state [B,D,W-1])
    dynamic_causal_conv1d(x, kernels [B,T,D,W], *, activation=None, initial_state=None,
        output_final_state=False, mask=None) -> (y [B,T,D], final_state or None)
    dynamic_causal_conv1d_step(x [B,D], kernel [B,D,W], state or None, *, activation=None)
        -> (y [B,D], new_state)
activation is None or "silu" ("swish" is accepted as its alias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import cuda_kernel
from .validation import check_shape

__all__ = [
    "causal_conv1d",
    "causal_conv1d_step",
    "dynamic_causal_conv1d",
    "dynamic_causal_conv1d_step",
]

_ACTIVATIONS = (None, "silu", "swish")


# ----------------------------------------------------------------------------- checks


def _check_activation(activation: str | None) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")


def _check_sequence(x: torch.Tensor) -> tuple[int, int, int]:
    check_shape("x", x, ("B", "T", "D"), what="batch, time, channels")
    return tuple(x.shape)  # type: ignore[return-value]


def _check_mask(mask: torch.Tensor | None, batch: int, seq_len: int) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.is_complex():
        raise ValueError(f"mask must be a real (bool, integer or float) tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != (batch, seq_len):
        raise ValueError(
            f"mask must have shape [B, T] = [{batch}, {seq_len}] (1 = token, 0 = padding), "
            f"got {list(mask.shape)}"
        )


def _check_state(name: str, state: torch.Tensor | None, batch: int, dim: int, width: int) -> None:
    if state is not None:
        check_shape(name, state, (batch, dim, width - 1), what="[B, D, W-1]: the last W-1 inputs")


# ----------------------------------------------------------------------------- helpers


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float32, or a wider float dtype if an input has one (float64 stays float64)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation in ("silu", "swish") else y


def _apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded positions (a select, not a multiply, so inf/NaN garbage cannot leak)."""
    if mask is None:
        return x
    keep = (mask.to(x.device) != 0).unsqueeze(-1)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _padded_channels_first(
    x: torch.Tensor, initial_state: torch.Tensor | None, width: int, dtype: torch.dtype
) -> torch.Tensor:
    """[initial_state or zeros, x^T]: [B, D, W-1+T], the conv input including its history."""
    batch, _, dim = x.shape
    if initial_state is None:
        history = x.new_zeros(batch, dim, width - 1, dtype=dtype)
    else:
        history = initial_state.to(dtype)
    return torch.cat([history, x.transpose(1, 2).to(dtype)], dim=-1)


def _last_inputs(padded: torch.Tensor, width: int) -> torch.Tensor:
    """The last W-1 columns of the padded input (works for T < W-1 too: the padded input
    always has at least W-1 columns). Written so W == 1 gives an empty [B, D, 0] state.
    A copy, not a view: a carried state must not keep the whole sequence's input alive."""
    return padded[..., padded.shape[-1] - (width - 1) :].clone()


# ----------------------------------------------------------------------------- static conv


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal conv of x [B, T, D] with weight [D, W] (+ bias [D]), then activation.

    initial_state [B, D, W-1] holds the W-1 inputs before x (zeros if None). Returns
    (y [B, T, D] in x.dtype, final_state [B, D, W-1] in x.dtype or None). mask [B, T]
    zeroes padded inputs first (see the module docstring).
    """
    batch, seq_len, dim = _check_sequence(x)
    check_shape("weight", weight, (dim, "W"), what="[D, W], D = x.shape[-1]")
    width = weight.shape[1]
    if width < 1:
        raise ValueError(f"weight must have shape [D, W] with W >= 1, got {list(weight.shape)}")
    if bias is not None:
        check_shape("bias", bias, (dim,), what="[D]")
    _check_state("initial_state", initial_state, batch, dim, width)
    _check_activation(activation)
    _check_mask(mask, batch, seq_len)

    x = _apply_mask(x, mask)
    out = _causal_conv1d_cuda(x, weight, bias, activation, initial_state, output_final_state)
    if out is not None:
        return out

    compute_dtype = _compute_dtype(x, weight, bias, initial_state)
    if initial_state is None:
        history = x.new_zeros(batch, width - 1, dim, dtype=compute_dtype)
    else:
        history = initial_state.transpose(1, 2).to(compute_dtype)
    padded = torch.cat([history, x.to(compute_dtype)], dim=1)  # [B, W-1+T, D], channels last
    # W shifted multiply-adds rather than a depthwise F.conv1d: no transposes to channels
    # first, and on CPU the depthwise convolution's backward is several times slower than these
    # elementwise ops at the sizes a sleep chunk has (benchmarks/bench_train_step.py).
    taps = weight.to(compute_dtype).t()  # [W, D]
    y = padded[:, :seq_len] * taps[0]
    for i in range(1, width):
        y = torch.addcmul(y, padded[:, i : i + seq_len], taps[i])
    if bias is not None:
        y = y + bias.to(compute_dtype)
    y = _activate(y, activation).to(x.dtype)
    final_state = None
    if output_final_state:  # the last W-1 inputs, as [B, D, W-1]; a copy (see _last_inputs)
        final_state = padded[:, padded.shape[1] - (width - 1) :].transpose(1, 2).to(x.dtype).clone()
    return y, final_state


def _causal_conv1d_cuda(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """causal_conv1d_fn on CUDA tensors, or None when the library is absent or cannot take
    these arguments (the caller then runs torch).

    The library works on [B, D, T]. Its initial_states need the channel-last layout (x with
    stride 1 along D, D a multiple of 8); we always compute the final state ourselves (a
    slice of [initial_state, x], differentiable) instead of using return_final_states, whose
    backward needs channel-last gradients we cannot promise.
    """
    conv_fn = cuda_kernel("causal_conv1d_fn", x, weight, bias, initial_state)
    supported_dtypes = (torch.float32, torch.float16, torch.bfloat16)
    if (
        conv_fn is None
        or not 2 <= weight.shape[1] <= 4
        or x.shape[1] == 0
        or x.dtype not in supported_dtypes
        or weight.dtype not in supported_dtypes
    ):
        return None
    batch, _, dim = x.shape
    width = weight.shape[1]
    channel_last_ok = dim % 8 == 0
    if initial_state is not None and not channel_last_ok:
        return None

    x = x.contiguous()
    if channel_last_ok:
        x_bdt = x.transpose(1, 2)  # [B, D, T] view with stride 1 along D: channel-last
    else:
        x_bdt = x.transpose(1, 2).contiguous()
    states_in = None
    if initial_state is not None:
        # [B, D, W-1] with stride 1 along D, in x's dtype, as the kernel checks.
        states_in = initial_state.to(x.dtype).transpose(1, 2).contiguous().transpose(1, 2)
    y = conv_fn(
        x_bdt,
        weight,
        None if bias is None else bias.to(weight.dtype).contiguous(),
        initial_states=states_in,
        activation="silu" if activation in ("silu", "swish") else None,
    )
    y = y.transpose(1, 2).to(x.dtype)
    final_state = None
    if output_final_state:
        history = x.new_zeros(batch, dim, width - 1) if initial_state is None else initial_state.to(x.dtype)
        final_state = _last_inputs(torch.cat([history, x.transpose(1, 2)], dim=-1), width)
    return y, final_state


def causal_conv1d_step(
    x: torch.Tensor,
    state: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of causal_conv1d: x [B, D], state [B, D, W-1] (None = zeros).

    Returns (y [B, D], new_state [B, D, W-1]) = the state shifted left by one with x appended;
    equal to causal_conv1d on a length-1 sequence. The input state is not modified.
    """
    check_shape("x", x, ("B", "D"), what="one token: batch, channels")
    batch, dim = x.shape
    check_shape("weight", weight, (dim, "W"), what="[D, W], D = x.shape[-1]")
    width = weight.shape[1]
    if width < 1:
        raise ValueError(f"weight must have shape [D, W] with W >= 1, got {list(weight.shape)}")
    if bias is not None:
        check_shape("bias", bias, (dim,), what="[D]")
    _check_state("state", state, batch, dim, width)
    _check_activation(activation)

    out = _causal_conv1d_step_cuda(x, state, weight, bias, activation)
    if out is not None:
        return out

    compute_dtype = _compute_dtype(x, weight, bias, state)
    history = (
        x.new_zeros(batch, dim, width - 1, dtype=compute_dtype) if state is None else state.to(compute_dtype)
    )
    window = torch.cat([history, x.to(compute_dtype).unsqueeze(-1)], dim=-1)  # [B, D, W]
    y = (window * weight.to(compute_dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(compute_dtype)
    y = _activate(y, activation).to(x.dtype)
    return y, window[..., 1:].to(x.dtype)


def _causal_conv1d_step_cuda(
    x: torch.Tensor,
    state: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """causal_conv1d_update on CUDA tensors, for inference only: it updates its state in
    place and has no autograd, so any input needing a gradient takes the torch path.

    Library versions differ on the state length they accept (exactly W in older releases,
    >= W-1 in newer ones); a [B, D, W] buffer holding our W-1 columns at its end works with
    both, since the kernel shifts the buffer left and appends x.
    """
    update_fn = cuda_kernel("causal_conv1d_update", x, weight, bias, state)
    supported_dtypes = (torch.float32, torch.float16, torch.bfloat16)
    tensors = [t for t in (x, state, weight, bias) if t is not None]
    if (
        update_fn is None
        or not 2 <= weight.shape[1] <= 4
        or x.dtype not in supported_dtypes
        or weight.dtype not in supported_dtypes
        or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    ):
        return None
    batch, dim = x.shape
    width = weight.shape[1]
    buffer = x.new_zeros(batch, dim, width)
    if state is not None:
        buffer[..., 1:] = state.to(x.dtype)
    y = update_fn(
        x.contiguous(),
        buffer,
        weight,
        None if bias is None else bias.to(weight.dtype).contiguous(),
        "silu" if activation in ("silu", "swish") else None,
    )
    return y.to(x.dtype), buffer[..., 1:].contiguous()


# ----------------------------------------------------------------------------- dynamic conv


def dynamic_causal_conv1d(
    x: torch.Tensor,
    kernels: torch.Tensor,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal conv whose kernel changes per token: y_t[d] = sum_i kernels[b, t, d, i]
    * x_{t-(W-1)+i}[d] (no bias: a generator's bias is part of its kernels).

    x [B, T, D]; kernels [B, T, D, W]; initial_state [B, D, W-1] (zeros if None).
    Returns (y [B, T, D] in x.dtype, final_state [B, D, W-1] or None). Vectorised: the
    windows are a strided view of the padded input, no loop over time.
    """
    batch, seq_len, dim = _check_sequence(x)
    check_shape("kernels", kernels, (batch, seq_len, dim, "W"), what="[B, T, D, W], B, T, D from x")
    width = kernels.shape[-1]
    if width < 1:
        raise ValueError(f"kernels must have shape [B, T, D, W] with W >= 1, got {list(kernels.shape)}")
    _check_state("initial_state", initial_state, batch, dim, width)
    _check_activation(activation)
    _check_mask(mask, batch, seq_len)

    x = _apply_mask(x, mask)
    compute_dtype = _compute_dtype(x, kernels, initial_state)
    padded = _padded_channels_first(x, initial_state, width, compute_dtype)  # [B, D, W-1+T]
    if seq_len == 0:  # unfold refuses an input shorter than its window
        y = x.new_zeros(batch, 0, dim)
    else:
        windows = padded.unfold(-1, width, 1)  # [B, D, T, W]: windows[..., t, i] = x_{t-(W-1)+i}
        y = torch.einsum("bdtw,btdw->btd", windows, kernels.to(compute_dtype))
        y = _activate(y, activation).to(x.dtype)
    final_state = _last_inputs(padded, width).to(x.dtype) if output_final_state else None
    return y, final_state


def dynamic_causal_conv1d_step(
    x: torch.Tensor,
    kernel: torch.Tensor,
    state: torch.Tensor | None,
    *,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of dynamic_causal_conv1d: x [B, D], this token's kernel [B, D, W],
    state [B, D, W-1] (None = zeros). Returns (y [B, D], new_state [B, D, W-1])."""
    check_shape("x", x, ("B", "D"), what="one token: batch, channels")
    batch, dim = x.shape
    check_shape("kernel", kernel, (batch, dim, "W"), what="[B, D, W], B, D from x")
    width = kernel.shape[-1]
    if width < 1:
        raise ValueError(f"kernel must have shape [B, D, W] with W >= 1, got {list(kernel.shape)}")
    _check_state("state", state, batch, dim, width)
    _check_activation(activation)

    compute_dtype = _compute_dtype(x, kernel, state)
    history = (
        x.new_zeros(batch, dim, width - 1, dtype=compute_dtype) if state is None else state.to(compute_dtype)
    )
    window = torch.cat([history, x.to(compute_dtype).unsqueeze(-1)], dim=-1)  # [B, D, W]
    y = _activate((window * kernel.to(compute_dtype)).sum(-1), activation).to(x.dtype)
    return y, window[..., 1:].to(x.dtype)

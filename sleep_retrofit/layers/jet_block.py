"""JetBlock: Jet-Nemotron's fast-weight token mixer (gated delta rule with a dynamic value conv).

Parameter names follow NVlabs/Jet-Nemotron (``jetai/modeling/hf/jet_block.py``) so that the
``layers.{i}.self_attn.*`` tensors of a Jet-Nemotron checkpoint load unchanged:

    q_proj, k_proj   hidden -> key_dim = H * d            (no bias)
    v_proj, g_proj   hidden -> value_dim = key_dim * expand_v  (no bias)
    b_proj, a_proj   hidden -> H                          (no bias)
    A_log, dt_bias   [H]
    dynamic_conv1d.kernel_generator.{w1, w2}             w1: hidden -> value_dim // reduction (no bias),
                                                          w2: -> value_dim * conv_size (with bias)
    o_norm.weight    [head_v_dim]                         (gated RMSNorm, shared by the heads)
    o_proj           value_dim -> hidden                  (no bias)

Per token (x is the block input):
    q = silu(q_proj x), k = silu(k_proj x)                              [H, d]
    v = silu(dynamic_conv(v_proj x; kernels generated from x))         [H, d * expand_v]
    beta = sigmoid(b_proj x), g = -exp(A_log) * softplus(a_proj x + dt_bias)
    gated delta rule with in-kernel L2 norm of q and k, scale d ** -0.5
    y = o_proj( rms_norm_per_head(o) * o_norm.weight * swish(g_proj x) )

The state is explicit (a :class:`FastWeightState`): ``recurrent`` [B, H, d, d*expand_v] float32 and
``conv = (last conv_size - 1 raw v_proj outputs [B, value_dim, conv_size - 1],)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.conv import dynamic_causal_conv1d, dynamic_causal_conv1d_step
from ..kernels.gated_delta_rule import chunk_gated_delta_rule, gated_delta_rule_step
from ..kernels.validation import check_shape
from .state import FastWeightState, check_state

__all__ = ["DynamicShortConvolution", "GatedRMSNorm", "JetBlock"]

# Upstream's dt initialisation range (Mamba2 style), hard coded there as well.
_DT_MIN, _DT_MAX, _DT_INIT_FLOOR = 1e-3, 0.1, 1e-4
# A_log = log(A) with A ~ U(0, 16).
_A_INIT_MAX = 16.0


def _already_loaded(param: torch.Tensor) -> bool:
    """transformers marks tensors that came from a checkpoint; never re-initialise those."""
    return bool(getattr(param, "_is_hf_initialized", False))


class DynamicShortConvolution(nn.Module):
    """Depthwise causal conv whose kernel is generated per token from the block input.

    ``kernel_generator`` is ``w1`` (no bias) -> SiLU -> ``w2`` (with bias); its flat output of size
    ``channels * kernel_size`` is read channel-major: ``kernels[..., d, i] = flat[..., d * W + i]``,
    and tap ``i`` multiplies input ``x_{t - (W-1) + i}`` (the last tap is the current token).
    With ``w1``/``w2`` weights zero (upstream init) the kernel is the bias: a static conv.
    """

    def __init__(
        self, channels: int, kernel_size: int, generator_input_size: int, generator_hidden_size: int
    ):
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.kernel_generator = nn.Sequential(
            OrderedDict(
                [
                    ("w1", nn.Linear(generator_input_size, generator_hidden_size, bias=False)),
                    ("act", nn.SiLU()),
                    ("w2", nn.Linear(generator_hidden_size, channels * kernel_size, bias=True)),
                ]
            )
        )

    def kernels(self, generator_input: torch.Tensor) -> torch.Tensor:
        """[..., generator_input_size] -> per-token kernels [..., channels, kernel_size]."""
        flat = self.kernel_generator(generator_input)
        return flat.unflatten(-1, (self.channels, self.kernel_size))

    def init_parameters(self, std: float) -> None:
        """Upstream init: generator weights zero, w2.bias ~ N(0, std) (the static kernel)."""
        with torch.no_grad():
            for weight in (self.kernel_generator.w1.weight, self.kernel_generator.w2.weight):
                if not _already_loaded(weight):
                    weight.zero_()
            if not _already_loaded(self.kernel_generator.w2.bias):
                self.kernel_generator.w2.bias.normal_(mean=0.0, std=std)


class GatedRMSNorm(nn.Module):
    """``rms_norm(x) * weight * swish(gate)`` over the last dim, computed in float32.

    The order (normalise, scale by weight, multiply by the gate's swish) is fla's
    ``FusedRMSNormGated`` with ``activation='swish'``, which upstream uses as ``o_norm``.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        gate = gate.float()
        return (x * self.weight.float() * (gate * torch.sigmoid(gate))).to(dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class JetBlock(nn.Module):
    """Jet-Nemotron's fast-weight token mixer; ``forward(x, state, attention_mask) -> (y, new_state)``.

    Args:
        hidden_size: model width (input and output size).
        num_heads: H, number of fast-weight heads.
        head_dim: d, the key size per head.
        expand_v: value size per head = ``d * expand_v`` (must come out integral, e.g. 2 or 8/3 with d=96).
        conv_size: W, width of the dynamic value conv.
        generator_reduction: the kernel generator's hidden size is ``value_dim // generator_reduction``.
        norm_eps: epsilon of the output gated RMSNorm (upstream stores it as a string; any float-like works).
        initializer_range: std of the static conv kernel (``kernel_generator.w2.bias``) at init.
        zero_init_output: zero ``o_proj`` so that a block inserted as ``x + block(norm(x))`` starts as
            the identity (used when retrofitting a model that has no fast weights).
        layer_idx: optional index of the layer in its model (for messages and caches).
        mode: upstream's kernel choice ("chunk" or "fused_recurrent"); both compute the same function,
            kept so that configs round-trip. Prefill always uses the chunked kernel here.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        expand_v: float = 2.0,
        conv_size: int = 4,
        generator_reduction: int = 8,
        norm_eps: float | str = 1e-5,
        initializer_range: float = 0.02,
        zero_init_output: bool = False,
        layer_idx: int | None = None,
        mode: str = "chunk",
    ):
        super().__init__()
        for name, value in (
            ("hidden_size", hidden_size),
            ("num_heads", num_heads),
            ("head_dim", head_dim),
            ("generator_reduction", generator_reduction),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(conv_size, int) or conv_size < 2:
            raise ValueError(
                f"conv_size must be an int >= 2 (the state keeps conv_size - 1 inputs), got {conv_size!r}"
            )
        if mode not in ("chunk", "fused_recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'fused_recurrent', got {mode!r}")
        expand_v = float(expand_v)
        key_dim = num_heads * head_dim
        head_v_dim = round(head_dim * expand_v)
        if expand_v <= 0 or head_v_dim < 1 or not math.isclose(head_dim * expand_v, head_v_dim, rel_tol=1e-5):
            raise ValueError(
                f"expand_v={expand_v} times head_dim={head_dim} must be a positive integer (the value size "
                f"per head), got {head_dim * expand_v}"
            )
        value_dim = num_heads * head_v_dim
        generator_hidden = value_dim // generator_reduction
        if generator_hidden < 1:
            raise ValueError(
                f"generator_reduction={generator_reduction} leaves no kernel-generator units "
                f"for value_dim={value_dim}"
            )

        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = self.head_k_dim = head_dim
        self.head_v_dim = head_v_dim
        self.expand_v = expand_v
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.conv_size = conv_size
        self.norm_eps = float(norm_eps)
        self.initializer_range = initializer_range
        self.zero_init_output = zero_init_output
        self.layer_idx = layer_idx
        self.mode = mode

        self.q_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, value_dim, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(num_heads))
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        # Optimisers that honour it (as upstream's training code does) skip weight decay on these.
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True
        self.dynamic_conv1d = DynamicShortConvolution(value_dim, conv_size, hidden_size, generator_hidden)
        self.g_proj = nn.Linear(hidden_size, value_dim, bias=False)
        self.o_norm = GatedRMSNorm(head_v_dim, eps=self.norm_eps)
        self.o_proj = nn.Linear(value_dim, hidden_size, bias=False)

        self.init_parameters()

    @property
    def _name(self) -> str:
        return "JetBlock" if self.layer_idx is None else f"JetBlock (layer {self.layer_idx})"

    # ------------------------------------------------------------------------------------ init

    def init_parameters(self, std: float | None = None) -> None:
        """Upstream's init of the block-specific parameters (the projections keep their own init).

        A_log = log U(0, 16); dt_bias = softplus^-1(dt), dt log-uniform in [1e-3, 0.1] (floored at 1e-4);
        kernel generator weights zero and its bias ~ N(0, std); o_norm weight ones; o_proj zero when
        ``zero_init_output``. Tensors already loaded from a checkpoint are left alone.
        """
        std = self.initializer_range if std is None else std
        with torch.no_grad():
            if not _already_loaded(self.A_log):
                a = torch.empty(self.num_heads, dtype=torch.float32).uniform_(0, _A_INIT_MAX)
                self.A_log.copy_(torch.log(a))
            if not _already_loaded(self.dt_bias):
                dt = torch.exp(
                    torch.rand(self.num_heads) * (math.log(_DT_MAX) - math.log(_DT_MIN)) + math.log(_DT_MIN)
                ).clamp(min=_DT_INIT_FLOOR)
                # Inverse of softplus: softplus(dt + log(-expm1(-dt))) == dt.
                self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            if not _already_loaded(self.o_norm.weight):
                self.o_norm.weight.fill_(1.0)
            if self.zero_init_output and not _already_loaded(self.o_proj.weight):
                self.o_proj.weight.zero_()
        self.dynamic_conv1d.init_parameters(std)

    # ----------------------------------------------------------------------------------- state

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        """(recurrent shape, conv shapes), both without the batch dimension."""
        return (self.num_heads, self.head_k_dim, self.head_v_dim), ((self.value_dim, self.conv_size - 1),)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> FastWeightState:
        """The all-zero state of a sequence start: recurrent float32, conv in ``dtype`` (default: the
        parameters' dtype)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        device = self.v_proj.weight.device if device is None else device
        dtype = self.v_proj.weight.dtype if dtype is None else dtype
        recurrent_shape, (conv_shape,) = self.state_shapes()
        return FastWeightState(
            torch.zeros(batch_size, *recurrent_shape, dtype=torch.float32, device=device),
            (torch.zeros(batch_size, *conv_shape, dtype=dtype, device=device),),
        )

    # --------------------------------------------------------------------------------- forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: FastWeightState | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, FastWeightState]:
        """Mix the tokens of ``hidden_states`` [B, T, hidden_size], continuing from ``state``.

        Args:
            hidden_states: the (normalised) block input [B, T, hidden_size].
            state: the state after the previous tokens of each sequence, or None for a sequence start.
            attention_mask: [B, T] with 1 for real tokens and 0 for padding, or None (all real). Padded
                positions do not touch the state and their output is zero, so a left-padded batch gives
                the same outputs and final states as the unpadded sequences.

        Returns:
            ``(y [B, T, hidden_size], new_state)``. With T == 1 and a state, the one-token step kernels run.
        """
        check_shape("hidden_states", hidden_states, ("B", "T", self.hidden_size), what="[B, T, hidden_size]")
        batch_size, seq_len, _ = hidden_states.shape
        recurrent_shape, conv_shapes = self.state_shapes()
        check_state(
            state,
            batch_size=batch_size,
            recurrent_shape=recurrent_shape,
            conv_shapes=conv_shapes,
            layer=self._name,
        )
        mask = self._check_mask(attention_mask, batch_size, seq_len)

        x = hidden_states
        q = F.silu(self.q_proj(x)).unflatten(-1, (self.num_heads, self.head_k_dim))
        k = F.silu(self.k_proj(x)).unflatten(-1, (self.num_heads, self.head_k_dim))
        v_raw = self.v_proj(x)  # [B, T, value_dim], what the conv state keeps
        kernels = self.dynamic_conv1d.kernels(x)  # [B, T, value_dim, W]
        beta = torch.sigmoid(self.b_proj(x))  # [B, T, H]
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        if mask is not None:
            # No decay (exp(0) = 1) and no write (beta = 0): the recurrent state passes padding unchanged.
            beta = beta * mask[..., None].to(beta.dtype)
            g = g * mask[..., None].to(g.dtype)

        if state is not None and seq_len == 1:
            o, new_state = self._step(q, k, v_raw, kernels, g, beta, state, mask)
        else:
            o, new_state = self._sequence(q, k, v_raw, kernels, g, beta, state, mask)

        gate = self.g_proj(x).unflatten(-1, (self.num_heads, self.head_v_dim))
        y = self.o_proj(self.o_norm(o, gate).flatten(-2))
        if mask is not None:
            y = y * mask[..., None].to(y.dtype)
        return y, new_state

    def _check_mask(
        self, attention_mask: torch.Tensor | None, batch_size: int, seq_len: int
    ) -> torch.Tensor | None:
        """[B, T] 0/1 mask as bool, or None when absent or all ones (the fast path)."""
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, torch.Tensor):
            raise ValueError(
                f"attention_mask must be a torch.Tensor [B, T], got {type(attention_mask).__name__}"
            )
        if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch_size, seq_len):
            raise ValueError(
                f"attention_mask must have shape [B, T] = [{batch_size}, {seq_len}] "
                f"(1 = token, 0 = padding), got {list(attention_mask.shape)}"
            )
        mask = attention_mask.to(device=self.q_proj.weight.device) != 0
        return None if bool(mask.all()) else mask

    def _step(self, q, k, v_raw, kernels, g, beta, state: FastWeightState, mask):
        """One token per sequence: the step kernels advance the carried state."""
        (conv_state,) = state.conv
        v, new_conv = dynamic_causal_conv1d_step(
            v_raw[:, 0], kernels[:, 0], conv_state.to(v_raw.dtype), activation="silu"
        )
        if mask is not None:  # a padded step leaves the conv state as it was
            new_conv = torch.where(mask[:, :1, None], new_conv, conv_state.to(new_conv.dtype))
        v = v.unflatten(-1, (self.num_heads, self.head_v_dim))
        o, recurrent = gated_delta_rule_step(
            q[:, 0], k[:, 0], v, g[:, 0], beta[:, 0], state.recurrent, use_qk_l2norm_in_kernel=True
        )
        return o[:, None], FastWeightState(recurrent, (new_conv,))

    def _sequence(self, q, k, v_raw, kernels, g, beta, state: FastWeightState | None, mask):
        """A whole chunk of tokens: the dynamic conv, then the chunked gated delta rule."""
        conv_state = None if state is None else state.conv[0].to(v_raw.dtype)
        if mask is None:
            v, new_conv = dynamic_causal_conv1d(
                v_raw, kernels, activation="silu", initial_state=conv_state, output_final_state=True
            )
        else:
            v, new_conv = self._masked_conv(v_raw, kernels, conv_state, mask)
        v = v.unflatten(-1, (self.num_heads, self.head_v_dim))
        o, recurrent = chunk_gated_delta_rule(
            q,
            k,
            v,
            g,
            beta,
            initial_state=None if state is None else state.recurrent,
            output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )
        return o, FastWeightState(recurrent, (new_conv,))

    def _masked_conv(
        self, v_raw: torch.Tensor, kernels: torch.Tensor, conv_state: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The dynamic conv over the real tokens only, wherever the padding sits.

        Each row's real tokens are moved to the front (stable order), convolved from the carried state,
        and moved back; the new state is the last W-1 entries of [state, real tokens]. Zeroing the pads
        instead (upstream) is only right for left padding from a zero state.
        """
        batch_size, seq_len, channels = v_raw.shape
        width_minus_one = self.conv_size - 1
        # Stable sort on "is padding" puts the real tokens first, in their order.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # [B, T]
        compact_v = v_raw.gather(1, order[..., None].expand(-1, -1, channels))
        compact_kernels = kernels.gather(1, order[..., None, None].expand(-1, -1, channels, self.conv_size))
        compact_y, _ = dynamic_causal_conv1d(
            compact_v, compact_kernels, activation="silu", initial_state=conv_state, output_final_state=False
        )
        y = torch.empty_like(compact_y).scatter_(1, order[..., None].expand(-1, -1, channels), compact_y)

        if conv_state is None:
            conv_state = v_raw.new_zeros(batch_size, channels, width_minus_one)
        history = torch.cat([conv_state, compact_v.transpose(1, 2)], dim=2)  # [B, D, W-1+T]
        num_real = mask.sum(dim=1)  # [B]
        last = num_real[:, None] + torch.arange(width_minus_one, device=v_raw.device)  # [B, W-1]
        new_conv = history.gather(2, last[:, None, :].expand(-1, channels, -1))
        return y, new_conv

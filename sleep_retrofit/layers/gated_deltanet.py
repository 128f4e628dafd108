"""Gated DeltaNet layer (Yang et al., "Gated Delta Networks", arXiv:2412.06464), parameter for
parameter compatible with flash-linear-attention 0.6's ``fla.layers.GatedDeltaNet``.

Per token (hidden x, heads h = 1..num_v_heads):
    q, k, v = silu(short_conv(q_proj x)), silu(short_conv(k_proj x)), silu(short_conv(v_proj x))
    beta    = sigmoid(b_proj x)                    (x2 with allow_neg_eigval)
    g       = -exp(A_log) * softplus(a_proj x + dt_bias)          (log decay, <= 0)
    o       = gated delta rule(l2norm(q), l2norm(k), v, g, beta)   (see kernels.gated_delta_rule)
    y       = o_proj(rmsnorm(o) * o_norm.weight * silu(g_proj x))  (per head)
With num_v_heads > num_heads (grouped value attention) every q/k head serves num_v_heads /
num_heads consecutive value heads.

Unlike fla, the state is an explicit value: forward(x, state, attention_mask) -> (y, new_state).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sleep_retrofit.kernels.gated_delta_rule import (
    chunk_gated_delta_rule,
    gated_delta_rule_step,
    recurrent_gated_delta_rule,
)

from .components import FastWeightMixer, Padding, RMSNormGated, ShortConvolution, init_log_decay_params
from .state import FastWeightState

__all__ = ["GatedDeltaNet"]


class GatedDeltaNet(FastWeightMixer):
    """Gated DeltaNet token mixer with fla's parameter names.

    Args mirror fla: hidden_size, expand_v (head_v_dim = head_dim * expand_v), head_dim,
    num_heads (q/k heads), num_v_heads (value heads, default num_heads), mode ("chunk" or
    "fused_recurrent": which kernel runs multi-token calls; results agree), use_gate,
    use_short_conv, allow_neg_eigval, conv_size, conv_bias, layer_idx, norm_eps.
    zero_init_output: zero o_proj so a residual block built around the layer starts as the identity.
    chunk_size: block length of the chunked kernel.

    State: FastWeightState(recurrent [B, num_v_heads, head_dim, head_v_dim] float32,
    conv (q [B, key_dim, W-1], k [B, key_dim, W-1], v [B, value_dim, W-1]) or () without short conv).
    """

    def __init__(
        self,
        hidden_size: int = 2048,
        expand_v: float = 2,
        head_dim: int = 256,
        num_heads: int = 6,
        num_v_heads: int | None = None,
        mode: str = "chunk",
        use_gate: bool = True,
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        layer_idx: int | None = None,
        norm_eps: float = 1e-5,
        zero_init_output: bool = False,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        if mode not in ("chunk", "fused_recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'fused_recurrent', got {mode!r}")
        num_v_heads = num_heads if num_v_heads is None else num_v_heads
        if num_v_heads % num_heads != 0:
            raise ValueError(f"num_v_heads={num_v_heads} must be a multiple of num_heads={num_heads}")
        head_v_dim = int(head_dim * expand_v)
        if not math.isclose(head_dim * expand_v, head_v_dim, rel_tol=1e-5):
            raise ValueError(f"head_dim * expand_v must be an integer, got {head_dim} * {expand_v}")

        self.hidden_size = hidden_size
        self.expand_v = expand_v
        self.mode = mode
        self.use_gate = use_gate
        self.use_short_conv = use_short_conv
        self.allow_neg_eigval = allow_neg_eigval
        self.conv_size = conv_size
        self.conv_bias = conv_bias
        self.layer_idx = layer_idx
        self.chunk_size = chunk_size

        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_v_heads = num_v_heads
        self.head_k_dim = head_dim
        self.head_v_dim = head_v_dim
        self.key_dim = num_heads * head_dim
        self.value_dim = num_v_heads * head_v_dim

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.a_proj = nn.Linear(hidden_size, num_v_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_v_heads, bias=False)

        A_log, dt_bias = init_log_decay_params(num_v_heads, A_init_range=(0.0, 16.0))
        self.A_log = nn.Parameter(A_log)
        self.A_log._no_weight_decay = True
        self.dt_bias = nn.Parameter(dt_bias)
        self.dt_bias._no_weight_decay = True

        if use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.k_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.v_conv1d = ShortConvolution(self.value_dim, conv_size, bias=conv_bias, activation="silu")
        if use_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        # Gated: fla's FusedRMSNormGated (norm, then swish gate); ungated: fla's plain RMSNorm.
        # Both keep a single `o_norm.weight` of size head_v_dim.
        self.o_norm = RMSNormGated(head_v_dim, eps=norm_eps, norm_before_gate=True)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        if zero_init_output:
            nn.init.zeros_(self.o_proj.weight)

    # -- state -----------------------------------------------------------------------------
    @property
    def recurrent_shape(self) -> tuple[int, int, int]:
        return (self.num_v_heads, self.head_k_dim, self.head_v_dim)

    @property
    def conv_shapes(self) -> tuple[tuple[int, int], ...]:
        if not self.use_short_conv:
            return ()
        width = self.conv_size - 1
        return ((self.key_dim, width), (self.key_dim, width), (self.value_dim, width))

    @property
    def state_reference_weight(self) -> torch.Tensor:
        return self.q_proj.weight

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        state: FastWeightState | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, FastWeightState]:
        """hidden_states [B, T, hidden_size]; state from a previous call (None: zeros);
        attention_mask [B, T] with 1 for tokens and 0 for padding (which leaves the state as it
        is). Returns y [B, T, hidden_size] (zeros at padded positions) and the new state."""
        x, padding, decode = self.enter_call(
            hidden_states, state, attention_mask, width=self.hidden_size, width_name="hidden_size"
        )

        q, k, v, conv_state = self._mix_short_conv(x, state, padding, decode)
        q = q.unflatten(-1, (self.num_heads, self.head_k_dim))
        k = k.unflatten(-1, (self.num_heads, self.head_k_dim))
        v = v.unflatten(-1, (self.num_v_heads, self.head_v_dim))
        if self.num_v_heads > self.num_heads:  # GVA: q/k head i serves value heads i*r .. i*r+r-1
            ratio = self.num_v_heads // self.num_heads
            q = q.repeat_interleave(ratio, dim=2)
            k = k.repeat_interleave(ratio, dim=2)

        g, beta = self.gates(x)
        if padding is not None:  # a padded token neither decays nor writes the fast weights
            beta = beta * padding.keep.unsqueeze(-1)
            g = g * padding.keep.unsqueeze(-1)

        initial_state = None if state is None else state.recurrent
        if decode:
            o, recurrent = gated_delta_rule_step(
                q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], initial_state, use_qk_l2norm_in_kernel=True
            )
            o = o.unsqueeze(1)
            recurrent = self.hold_recurrent(recurrent, initial_state, padding)
        else:
            kernel = chunk_gated_delta_rule if self.mode == "chunk" else recurrent_gated_delta_rule
            extra = {"chunk_size": self.chunk_size} if self.mode == "chunk" else {}
            o, recurrent = kernel(
                q,
                k,
                v,
                g,
                beta,
                initial_state=initial_state,
                output_final_state=True,
                use_qk_l2norm_in_kernel=True,
                **extra,
            )

        gate = self.g_proj(x).unflatten(-1, (self.num_v_heads, self.head_v_dim)) if self.use_gate else None
        o = self.o_norm(o, gate)  # [B, T, HV, V]
        y = self.o_proj(o.flatten(-2).to(x.dtype))
        return self.leave_call(y, padding, decode), FastWeightState(recurrent, conv_state)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-token, per-head gates of x [B, T, hidden_size], float32: the log decay
        g = -exp(A_log) * softplus(a_proj x + dt_bias) (<= 0) and the write strength beta."""
        beta = torch.sigmoid(self.b_proj(x).float())
        if self.allow_neg_eigval:
            beta = beta * 2.0
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        return g, beta

    def _mix_short_conv(
        self, x: torch.Tensor, state: FastWeightState | None, padding: Padding | None, decode: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """q, k, v [B, T, dim] after projection, short conv and SiLU, and the new conv states."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if not self.use_short_conv:
            return F.silu(q), F.silu(k), F.silu(v), ()
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        old_states = (None, None, None) if state is None else state.conv
        outputs, new_states = [], []
        for conv, inputs, old in zip(convs, (q, k, v), old_states, strict=True):
            y, new = conv.convolve(inputs, old, padding, decode)
            outputs.append(y)
            new_states.append(new)
        return outputs[0], outputs[1], outputs[2], tuple(new_states)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_v_heads={self.num_v_heads}, "
            f"head_dim={self.head_dim}, head_v_dim={self.head_v_dim}, mode={self.mode!r}"
        )

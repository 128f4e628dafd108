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

from ..checks import is_int
from ..kernels.conv import dynamic_causal_conv1d, dynamic_causal_conv1d_step
from ..kernels.gated_delta_rule import chunk_gated_delta_rule, gated_delta_rule_step
from .components import FastWeightMixer, Padding, RMSNormGated, init_log_decay_params
from .state import FastWeightState

__all__ = ["DynamicShortConvolution", "JetBlock"]


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

    def convolve(
        self,
        x: torch.Tensor,
        kernels: torch.Tensor,
        state: torch.Tensor | None,
        padding: Padding | None,
        decode: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SiLU(dynamic conv) of x [B, T, channels] with per-token ``kernels`` [B, T, channels, W],
        continuing from ``state`` [B, channels, W-1] (None: zeros). Returns (y, new state).

        A one-token decode call runs the step kernel (a padded step keeps the state). With
        ``padding`` (x in its left-padded layout) the state is placed right before each row's first
        real token, so the outputs at real tokens and the new state ignore the pads."""
        if state is not None:
            state = state.to(x.dtype)
        if decode:
            y, new_state = dynamic_causal_conv1d_step(x[:, 0], kernels[:, 0], state, activation="silu")
            if padding is not None:
                new_state = padding.hold_state(new_state, state)
            return y.unsqueeze(1), new_state
        if padding is None:
            return dynamic_causal_conv1d(
                x, kernels, activation="silu", initial_state=state, output_final_state=True
            )
        width = self.kernel_size - 1
        if state is None:
            state = x.new_zeros(x.shape[0], self.channels, width)
        # The kernels of the W-1 prepended slots are never used: their outputs are dropped.
        kernels = torch.cat([kernels.new_zeros(x.shape[0], width, *kernels.shape[2:]), kernels], dim=1)
        y, new_state = dynamic_causal_conv1d(
            padding.prepend_state(x, state), kernels, activation="silu", output_final_state=True
        )
        return y[:, width:], new_state

    def init_parameters(self, std: float) -> None:
        """Upstream init: generator weights zero, w2.bias ~ N(0, std) (the static kernel)."""
        with torch.no_grad():
            for weight in (self.kernel_generator.w1.weight, self.kernel_generator.w2.weight):
                if not _already_loaded(weight):
                    weight.zero_()
            if not _already_loaded(self.kernel_generator.w2.bias):
                self.kernel_generator.w2.bias.normal_(mean=0.0, std=std)


class JetBlock(FastWeightMixer):
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
            if not is_int(value) or value < 1:
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
        # fla's FusedRMSNormGated with a swish gate (upstream's o_norm): normalise, weight, gate.
        self.o_norm = RMSNormGated(head_v_dim, eps=self.norm_eps, norm_before_gate=True)
        self.o_proj = nn.Linear(value_dim, hidden_size, bias=False)

        self.init_parameters()

    # ------------------------------------------------------------------------------------ init

    def init_parameters(self, std: float | None = None) -> None:
        """Upstream's init of the block-specific parameters (the projections keep their own init).

        A_log = log U(0, 16); dt_bias = softplus^-1(dt), dt log-uniform in [1e-3, 0.1] (floored at 1e-4);
        kernel generator weights zero and its bias ~ N(0, std); o_norm weight ones; o_proj zero when
        ``zero_init_output``. Tensors already loaded from a checkpoint are left alone.
        """
        std = self.initializer_range if std is None else std
        with torch.no_grad():
            if not (_already_loaded(self.A_log) and _already_loaded(self.dt_bias)):
                # Upstream's (Mamba2-style) ranges, hard coded there as well.
                A_log, dt_bias = init_log_decay_params(self.num_heads, A_init_range=(0.0, 16.0))
                if not _already_loaded(self.A_log):
                    self.A_log.copy_(A_log)
                if not _already_loaded(self.dt_bias):
                    self.dt_bias.copy_(dt_bias)
            if not _already_loaded(self.o_norm.weight):
                self.o_norm.weight.fill_(1.0)
            if self.zero_init_output and not _already_loaded(self.o_proj.weight):
                self.o_proj.weight.zero_()
        self.dynamic_conv1d.init_parameters(std)

    # ----------------------------------------------------------------------------------- state

    @property
    def recurrent_shape(self) -> tuple[int, int, int]:
        return (self.num_heads, self.head_k_dim, self.head_v_dim)

    @property
    def conv_shapes(self) -> tuple[tuple[int, int], ...]:
        """The last conv_size - 1 raw v_proj outputs."""
        return ((self.value_dim, self.conv_size - 1),)

    @property
    def state_reference_weight(self) -> torch.Tensor:
        return self.v_proj.weight

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
        x, padding, decode = self.enter_call(
            hidden_states, state, attention_mask, width=self.hidden_size, width_name="hidden_size"
        )
        q = F.silu(self.q_proj(x)).unflatten(-1, (self.num_heads, self.head_k_dim))
        k = F.silu(self.k_proj(x)).unflatten(-1, (self.num_heads, self.head_k_dim))
        v_raw = self.v_proj(x)  # [B, T, value_dim], what the conv state keeps
        kernels = self.dynamic_conv1d.kernels(x)  # [B, T, value_dim, W]
        beta = torch.sigmoid(self.b_proj(x))  # [B, T, H]
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        if padding is not None:
            # No decay (exp(0) = 1) and no write (beta = 0): the recurrent state passes padding unchanged.
            beta = beta * padding.keep[..., None].to(beta.dtype)
            g = g * padding.keep[..., None].to(g.dtype)

        v, conv_state = self.dynamic_conv1d.convolve(
            v_raw, kernels, None if state is None else state.conv[0], padding, decode
        )
        v = v.unflatten(-1, (self.num_heads, self.head_v_dim))
        initial_state = None if state is None else state.recurrent
        if decode:
            o, recurrent = gated_delta_rule_step(
                q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], initial_state, use_qk_l2norm_in_kernel=True
            )
            o = o[:, None]
            recurrent = self.hold_recurrent(recurrent, initial_state, padding)
        else:
            o, recurrent = chunk_gated_delta_rule(
                q,
                k,
                v,
                g,
                beta,
                initial_state=initial_state,
                output_final_state=True,
                use_qk_l2norm_in_kernel=True,
            )

        gate = self.g_proj(x).unflatten(-1, (self.num_heads, self.head_v_dim))
        y = self.o_proj(self.o_norm(o, gate).flatten(-2))
        return self.leave_call(y, padding, decode), FastWeightState(recurrent, (conv_state,))

"""Pieces shared by the fast-weight layers: the short causal convolution, the gated RMSNorm and
the bookkeeping that makes padded tokens invisible to a layer's state.

* ``ShortConvolution`` - a depthwise causal ``nn.Conv1d`` (weight ``[D, 1, W]``, optional bias),
  the parameter layout of fla's ShortConvolution and of mamba_ssm's ``conv1d``, run through
  ``sleep_retrofit.kernels.conv`` with an explicit conv state ``[B, D, W-1]``.
* ``RMSNormGated``     - RMSNorm with a SiLU gate, optionally per group: fla's
  ``FusedRMSNormGated`` (norm, then gate) and mamba_ssm's ``RMSNormGated`` (gate, then norm, per
  group) in one module with a single ``weight``.
* ``Padding``          - a ``[B, T]`` 1/0 attention mask turned into a layout the kernels can use:
  every row's real tokens moved to its end (left padding, original order kept), so that a padded
  token can be made a no-op for the recurrent state (zero decay and write) and for the conv state
  (the conv sees the carried state directly before the first real token).
* ``FastWeightMixer``  - the base of GatedDeltaNet, Mamba2 and JetBlock: the zero state, the checks
  of a call's inputs, and the move into (and out of) the padded layout around the layer's math.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sleep_retrofit.kernels.conv import causal_conv1d, causal_conv1d_step
from sleep_retrofit.kernels.validation import check_shape

from ..checks import is_int
from .state import FastWeightState, check_state

__all__ = ["FastWeightMixer", "Padding", "RMSNormGated", "ShortConvolution", "init_log_decay_params"]


def init_log_decay_params(
    num_heads: int,
    *,
    A_init_range: tuple[float, float],
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba2's (and fla's) initialisation of the per-head decay parameters: A ~ U(A_init_range),
    A_log = log(A); dt log-uniform in [dt_min, dt_max] (floored at dt_init_floor) and
    dt_bias = softplus^-1(dt), so that softplus(dt_bias) starts at a useful step size."""
    A = torch.empty(num_heads, dtype=torch.float32).uniform_(*A_init_range)
    dt = torch.exp(torch.rand(num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    inv_dt = dt + torch.log(-torch.expm1(-dt))  # softplus(inv_dt) == dt
    return torch.log(A), inv_dt


@dataclass
class Padding:
    """The padded positions of a batch, with real tokens moved to the end of every row.

    order:   [B, T] source position of each slot of the left-padded layout.
    keep:    [B, T] bool, True at the real-token slots of the left-padded layout.
    num_pad: [B] number of padded positions per row.
    mask:    [B, T] bool, True at the real tokens in the caller's layout.
    """

    order: torch.Tensor
    keep: torch.Tensor
    num_pad: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor | None, batch_size: int, seq_len: int) -> Padding | None:
        """Build from a 1/0 (or bool) mask ``[B, T]``; a longer mask ``[B, T' >= T]`` (the full mask
        transformers passes during cached decoding) is cut to its last T columns. Returns None when
        there is no mask or it has no zeros, so the unpadded fast path runs."""
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, torch.Tensor):
            raise ValueError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if (
            attention_mask.dim() != 2
            or attention_mask.shape[0] != batch_size
            or attention_mask.shape[1] < seq_len
        ):
            raise ValueError(
                f"attention_mask must have shape [{batch_size}, {seq_len}] (1 = token, 0 = padding), "
                f"got {list(attention_mask.shape)}"
            )
        mask = attention_mask[:, -seq_len:] != 0
        if bool(mask.all()):
            return None
        # A stable sort puts padded slots (0) first and keeps real tokens in their order.
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        keep = torch.gather(mask, 1, order)
        num_pad = seq_len - mask.sum(dim=1)
        return cls(order=order, keep=keep, num_pad=num_pad, mask=mask)

    def to_left_padded(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] in the caller's layout -> the left-padded layout, padded tokens zeroed (so
        whatever a pad holds, even inf or NaN, cannot reach the state)."""
        index = self.order.view(*self.order.shape, *([1] * (x.dim() - 2))).expand_as(x)
        keep = self.keep.view(*self.keep.shape, *([1] * (x.dim() - 2)))
        return torch.where(keep, torch.gather(x, 1, index), torch.zeros((), dtype=x.dtype, device=x.device))

    def from_left_padded(self, y: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] in the left-padded layout -> the caller's layout, zeros at padded positions
        (like fla's pad_input) so that no value computed for a pad leaks out."""
        index = self.order.view(*self.order.shape, *([1] * (y.dim() - 2))).expand_as(y)
        return self.zero_padded(torch.empty_like(y).scatter_(1, index, y))

    def zero_padded(self, y: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] in the caller's layout with zeros at the padded positions."""
        mask = self.mask.view(*self.mask.shape, *([1] * (y.dim() - 2)))
        return torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))

    def hold_state(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """For a one-token call: `new` [B, ...] where the token is real, `old` where it is padding."""
        mask = self.mask[:, 0].view(-1, *([1] * (new.dim() - 1)))
        return torch.where(mask, new, old.to(new.dtype))

    def prepend_state(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Place a conv state directly before each row's first real token.

        x [B, T, D] in the left-padded layout, state [B, D, W-1] -> [B, W-1+T, D]: zeros for the
        first num_pad slots, then the W-1 state columns, then the real tokens. A causal conv over it
        from a zero state, its first W-1 outputs dropped, continues the state across the padding;
        its last W-1 inputs are the new state."""
        width = state.shape[-1]
        seq_len = x.shape[1]
        # extended[j]: the state's column j - p for p <= j < p + W-1, else x[j - (W-1)] (the real
        # tokens already sit at the end of x); zero for j < p.
        extended = torch.cat([state.transpose(1, 2).to(x.dtype), x], dim=1)  # [B, W-1+T, D]
        j = torch.arange(width + seq_len, device=x.device).unsqueeze(0)  # [1, W-1+T]
        p = self.num_pad.unsqueeze(1)  # [B, 1]
        source = torch.where(j < p + width, j - p, j).clamp(min=0)
        extended = torch.gather(extended, 1, source.unsqueeze(-1).expand_as(extended))
        return torch.where((j >= p).unsqueeze(-1), extended, torch.zeros((), dtype=x.dtype, device=x.device))


class ShortConvolution(nn.Conv1d):
    """Depthwise causal convolution with an explicit conv state, laid out as ``nn.Conv1d``
    (``weight [D, 1, W]``, ``bias [D]`` or absent) so fla / mamba_ssm checkpoints load.

    forward(x [B, T, D], state [B, D, W-1] | None, padding: Padding | None) -> (y [B, T, D], state)
    step(x [B, D], state [B, D, W-1]) -> (y [B, D], state)
    """

    def __init__(
        self,
        hidden_size: int,
        kernel_size: int,
        bias: bool = False,
        activation: str | None = "silu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2 for a causal short convolution, got {kernel_size}")
        if activation not in (None, "silu"):
            raise ValueError(f"activation must be None or 'silu', got {activation!r}")
        super().__init__(
            in_channels=hidden_size,
            out_channels=hidden_size,
            kernel_size=kernel_size,
            groups=hidden_size,
            padding=kernel_size - 1,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.hidden_size = hidden_size
        self.activation = activation

    @property
    def state_size(self) -> int:
        """Number of past inputs the conv state holds (W - 1)."""
        return self.kernel_size[0] - 1

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype=None
    ) -> torch.Tensor:
        return torch.zeros(
            batch_size,
            self.hidden_size,
            self.state_size,
            device=device if device is not None else self.weight.device,
            dtype=dtype if dtype is not None else self.weight.dtype,
        )

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None = None,
        padding: Padding | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolve a sequence. With ``padding`` (x in its left-padded layout) the padded inputs
        are dropped and the carried state is placed right before each row's first real token, so
        padding changes neither the outputs at real tokens nor the final state."""
        weight = self.weight.squeeze(1)  # [D, W]
        if padding is None:
            return causal_conv1d(
                x, weight, self.bias, activation=self.activation, initial_state=state, output_final_state=True
            )
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        y, final_state = causal_conv1d(
            padding.prepend_state(x, state),
            weight,
            self.bias,
            activation=self.activation,
            initial_state=None,
            output_final_state=True,
        )
        return y[:, self.state_size :], final_state

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step: x [B, D], state [B, D, W-1] -> (y [B, D], new state)."""
        return causal_conv1d_step(x, state, self.weight.squeeze(1), self.bias, activation=self.activation)

    def convolve(
        self, x: torch.Tensor, state: torch.Tensor | None, padding: Padding | None, decode: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What a layer call needs: ``step`` for a one-token decode call (a padded step keeps the
        state as it was), else ``forward``. x [B, T, D] -> (y [B, T, D], new state)."""
        if not decode:
            return self(x, state, padding)
        y, new_state = self.step(x[:, 0], state)
        if padding is not None:
            new_state = padding.hold_state(new_state, state)
        return y.unsqueeze(1), new_state


class RMSNormGated(nn.Module):
    """RMSNorm with an optional SiLU gate, computed in float32 and cast back to the input dtype.

    norm_before_gate=True:  y = rmsnorm(x) * weight * silu(gate)        (fla FusedRMSNormGated)
    norm_before_gate=False: y = rmsnorm(x * silu(gate)) * weight         (mamba_ssm RMSNormGated)
    group_size: normalise over consecutive groups of this many channels (None: all channels).
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        group_size = hidden_size if group_size is None else group_size
        if hidden_size % group_size != 0:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by group_size={group_size}")
        self.hidden_size = hidden_size
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        input_dtype = x.dtype
        x = x.float()
        if gate is not None and not self.norm_before_gate:
            x = x * F.silu(gate.float())
        groups = x.unflatten(-1, (-1, self.group_size))
        x = (groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)).flatten(-2)
        y = x * self.weight.float()
        if gate is not None and self.norm_before_gate:
            y = y * F.silu(gate.float())
        return y.to(input_dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}, eps={self.eps}, group_size={self.group_size}, "
            f"norm_before_gate={self.norm_before_gate}"
        )


class FastWeightMixer(nn.Module):
    """Base of the fast-weight token mixers: ``forward(x, state, attention_mask) -> (y, new_state)``.

    A subclass defines ``recurrent_shape`` and ``conv_shapes`` (without the batch dimension) and
    ``state_reference_weight`` (whose device and dtype a new conv state takes), and wraps its math
    in ``enter_call`` / ``leave_call``, which check the inputs and move padded batches into the
    left-padded layout of :class:`Padding` and back.
    """

    layer_idx: int | None

    @property
    def recurrent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def conv_shapes(self) -> tuple[tuple[int, ...], ...]:
        raise NotImplementedError

    @property
    def state_reference_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> FastWeightState:
        """A zero state (what a sequence starts from). The recurrent part is float32; the conv
        states hold projected inputs, in `dtype` (default: the input projection's dtype)."""
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        device = self.state_reference_weight.device if device is None else device
        dtype = self.state_reference_weight.dtype if dtype is None else dtype
        recurrent = torch.zeros(batch_size, *self.recurrent_shape, device=device, dtype=torch.float32)
        conv = tuple(
            torch.zeros(batch_size, *shape, device=device, dtype=dtype) for shape in self.conv_shapes
        )
        return FastWeightState(recurrent, conv)

    def enter_call(
        self,
        hidden_states: torch.Tensor,
        state: FastWeightState | None,
        attention_mask: torch.Tensor | None,
        *,
        width: int,
        width_name: str,
    ) -> tuple[torch.Tensor, Padding | None, bool]:
        """Check a call's inputs and return ``(x, padding, decode)``.

        x: hidden_states [B, T, width], in the left-padded layout (pads zeroed) when padded.
        padding: None when there is no padding. decode: a one-token call continuing a state, which
        runs the step kernels (and has nothing to reorder: its pad, if any, is only zeroed).
        """
        check_shape("hidden_states", hidden_states, ("B", "T", width), what=f"batch, time, {width_name}")
        batch_size, seq_len, _ = hidden_states.shape
        if seq_len < 1:
            raise ValueError("hidden_states must hold at least one token (T >= 1)")
        check_state(
            state,
            batch_size=batch_size,
            recurrent_shape=self.recurrent_shape,
            conv_shapes=self.conv_shapes,
            layer=f"{type(self).__name__}(layer_idx={self.layer_idx})",
        )
        padding = Padding.from_mask(attention_mask, batch_size, seq_len)
        decode = seq_len == 1 and state is not None
        if padding is None:
            return hidden_states, None, decode
        x = padding.zero_padded(hidden_states) if decode else padding.to_left_padded(hidden_states)
        return x, padding, decode

    @staticmethod
    def leave_call(y: torch.Tensor, padding: Padding | None, decode: bool) -> torch.Tensor:
        """The output [B, T, ...] back in the caller's layout, zeros at padded positions."""
        if padding is None:
            return y
        return padding.zero_padded(y) if decode else padding.from_left_padded(y)

    @staticmethod
    def hold_recurrent(
        recurrent: torch.Tensor, initial_state: torch.Tensor, padding: Padding | None
    ) -> torch.Tensor:
        """After a decode step: the old recurrent state where the token was a pad (zero decay and
        write already make the step a no-op; this says so explicitly)."""
        return recurrent if padding is None else padding.hold_state(recurrent, initial_state)

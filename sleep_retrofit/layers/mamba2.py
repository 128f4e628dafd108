"""Mamba2 layer (Dao & Gu, "Transformers are SSMs", arXiv:2405.21060), parameter for parameter
compatible with mamba_ssm 2.3.2's ``mamba_ssm.modules.mamba2.Mamba2``.

Per token (input u):
    [z0, x0, z, xBC, dt] = in_proj u          (z0/x0: optional gated-MLP part when d_ssm < d_inner)
    x, B, C = split(silu(conv1d(xBC)))        (causal depthwise conv over x, B and C together)
    dt      = softplus(dt + dt_bias), clamped to dt_limit;  A = -exp(A_log)
    y       = SSD scan(x, dt, A, B, C) + D * x               (see kernels.ssd; B/C shared per group)
    y       = norm(y, z)  = rmsnorm_per_group(y * silu(z)) * norm.weight  (norm_before_gate=False)
    out     = out_proj(cat(silu(z0) * x0, y))

Unlike mamba_ssm, the state is an explicit value: forward(u, state, attention_mask) -> (out, new_state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sleep_retrofit.kernels.ssd import ssd_chunk_scan, ssd_step

from .components import FastWeightMixer, RMSNormGated, ShortConvolution, init_log_decay_params
from .state import FastWeightState

__all__ = ["Mamba2"]


class Mamba2(FastWeightMixer):
    """Mamba2 mixer with mamba_ssm's parameter names (in_proj, conv1d, dt_bias, A_log, D,
    norm.weight, out_proj).

    Args mirror mamba_ssm: d_model, d_state, d_conv, conv_init, expand, headdim, d_ssm (SSM on
    only this many channels, the rest a gated MLP), ngroups, A_init_range, D_has_hdim, rmsnorm,
    norm_before_gate, dt_min, dt_max, dt_init_floor, dt_limit, bias, conv_bias, chunk_size,
    layer_idx, device, dtype. zero_init_output: zero out_proj so a residual block built around
    the layer starts as the identity.

    State: FastWeightState(recurrent [B, nheads, headdim, d_state] float32,
    conv (xBC [B, d_ssm + 2 * ngroups * d_state, d_conv - 1],)).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        conv_init: float | None = None,
        expand: int = 2,
        headdim: int = 64,
        d_ssm: int | None = None,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        layer_idx: int | None = None,
        zero_init_output: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        d_inner = expand * d_model
        d_ssm = d_inner if d_ssm is None else d_ssm
        if not 0 < d_ssm <= d_inner:
            raise ValueError(f"d_ssm={d_ssm} must be in (0, expand * d_model = {d_inner}]")
        if d_ssm % headdim != 0:
            raise ValueError(f"d_ssm={d_ssm} must be divisible by headdim={headdim}")
        nheads = d_ssm // headdim
        if nheads % ngroups != 0:
            raise ValueError(f"the number of heads ({nheads}) must be divisible by ngroups={ngroups}")
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {A_init_range}")

        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.conv_init = conv_init
        self.expand = expand
        self.d_inner = d_inner
        self.headdim = headdim
        self.d_ssm = d_ssm
        self.d_mlp = d_inner - d_ssm  # width of the gated-MLP part (z0, x0)
        self.ngroups = ngroups
        self.nheads = nheads
        self.D_has_hdim = D_has_hdim
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.activation = "silu"
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx

        # Order: [z, x, B, C, dt] (plus [z0, x0] in front when d_ssm < d_inner).
        d_in_proj = 2 * d_inner + 2 * ngroups * d_state + nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory)
        self.conv_dim = d_ssm + 2 * ngroups * d_state
        self.conv1d = ShortConvolution(self.conv_dim, d_conv, bias=conv_bias, activation="silu", **factory)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)

        A_log, dt_bias = init_log_decay_params(
            nheads, A_init_range=A_init_range, dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor
        )
        self.dt_bias = nn.Parameter(dt_bias.to(device=device, dtype=dtype))
        self.dt_bias._no_weight_decay = True
        self.A_log = nn.Parameter(A_log.to(device=device, dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_ssm if D_has_hdim else nheads, device=device))
        self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(
                d_ssm, eps=1e-5, group_size=d_ssm // ngroups, norm_before_gate=norm_before_gate, **factory
            )
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **factory)
        if zero_init_output:
            nn.init.zeros_(self.out_proj.weight)
            if self.out_proj.bias is not None:
                nn.init.zeros_(self.out_proj.bias)

    # -- state -----------------------------------------------------------------------------
    @property
    def recurrent_shape(self) -> tuple[int, int, int]:
        return (self.nheads, self.headdim, self.d_state)

    @property
    def conv_shapes(self) -> tuple[tuple[int, int], ...]:
        return ((self.conv_dim, self.d_conv - 1),)

    @property
    def state_reference_weight(self) -> torch.Tensor:
        return self.in_proj.weight

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        state: FastWeightState | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, FastWeightState]:
        """hidden_states [B, T, d_model]; state from a previous call (None: zeros);
        attention_mask [B, T] with 1 for tokens and 0 for padding (which leaves the state as it
        is). Returns out [B, T, d_model] (zeros at padded positions) and the new state."""
        u, padding, decode = self.enter_call(
            hidden_states, state, attention_mask, width=self.d_model, width_name="d_model"
        )

        zxbcdt = self.in_proj(u)
        z0, x0, z, xBC, dt = torch.split(
            zxbcdt, [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads], dim=-1
        )
        xBC, conv_state = self.conv1d.convolve(xBC, None if state is None else state.conv[0], padding, decode)
        x, B, C = torch.split(
            xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1
        )
        x = x.unflatten(-1, (self.nheads, self.headdim))
        B = B.unflatten(-1, (self.ngroups, self.d_state))
        C = C.unflatten(-1, (self.ngroups, self.d_state))

        # The step size is computed here rather than in the kernel so that padded tokens can be
        # given dt = 0: no decay (exp(0 * A) = 1) and no write.
        dt = F.softplus(dt.float() + self.dt_bias.float())
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(min=self.dt_limit[0], max=self.dt_limit[1])
        if padding is not None:
            dt = dt * padding.keep.unsqueeze(-1)
        A = -torch.exp(self.A_log.float())
        # D per head goes to the kernel; D per channel (D_has_hdim) is added here.
        D_kernel = None if self.D_has_hdim else self.D

        initial_state = None if state is None else state.recurrent
        if decode:
            y, recurrent = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], initial_state, D=D_kernel)
            y = y.unsqueeze(1)
            recurrent = self.hold_recurrent(recurrent, initial_state, padding)
        else:
            y, recurrent = ssd_chunk_scan(
                x,
                dt,
                A,
                B,
                C,
                D=D_kernel,
                initial_state=initial_state,
                output_final_state=True,
                chunk_size=self.chunk_size,
            )
        if self.D_has_hdim:
            y = y + x * self.D.view(self.nheads, self.headdim).to(x.dtype)
        y = y.flatten(-2).to(u.dtype)  # [B, T, d_ssm]
        if self.rmsnorm:
            y = self.norm(y, z)
        else:
            y = y * F.silu(z)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        out = self.out_proj(y)
        return self.leave_call(out, padding, decode), FastWeightState(recurrent, (conv_state,))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, nheads={self.nheads}, headdim={self.headdim}, "
            f"ngroups={self.ngroups}, d_conv={self.d_conv}, chunk_size={self.chunk_size}"
        )

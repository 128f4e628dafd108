"""GatedDeltaNet and Mamba2 layers: upstream math and names, state threading, padding, dtypes.

The references below are written from the upstream formulas (fla 0.6's GatedDeltaNet,
mamba_ssm 2.3.2's Mamba2), token by token in float64, independently of the kernels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda

from sleep_retrofit.layers import FastWeightState, GatedDeltaNet, Mamba2

B, T = 2, 11

# Small configs that still exercise every option: GVA, multi-chunk, both kernels, no gate,
# negative eigenvalues, groups, a gated-MLP part (d_ssm), per-channel D, dt_limit, biases.
CONFIGS = {
    "gdn-gva": (
        GatedDeltaNet,
        dict(
            hidden_size=32, head_dim=8, num_heads=2, num_v_heads=4, expand_v=1.5, conv_bias=True, chunk_size=4
        ),
    ),
    "gdn-recurrent-nogate": (
        GatedDeltaNet,
        dict(
            hidden_size=24,
            head_dim=8,
            num_heads=3,
            expand_v=2,
            mode="fused_recurrent",
            use_gate=False,
            allow_neg_eigval=True,
        ),
    ),
    "gdn-noconv": (
        GatedDeltaNet,
        dict(hidden_size=16, head_dim=4, num_heads=2, expand_v=1, use_short_conv=False, chunk_size=3),
    ),
    "mamba2-groups": (Mamba2, dict(d_model=32, d_state=8, headdim=8, ngroups=2, chunk_size=4)),
    "mamba2-variants": (
        Mamba2,
        dict(
            d_model=24,
            d_state=6,
            headdim=8,
            d_ssm=32,
            D_has_hdim=True,
            norm_before_gate=True,
            dt_limit=(0.01, 0.5),
            bias=True,
            conv_bias=False,
            d_conv=3,
            chunk_size=5,
        ),
    ),
    "mamba2-nonorm": (Mamba2, dict(d_model=16, d_state=4, headdim=4, rmsnorm=False, chunk_size=256)),
}
ALL = list(CONFIGS)


def make_layer(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A layer with every parameter away from its trivial init (norm weights, D, biases), so a
    wrongly wired parameter changes the output."""
    cls, kwargs = CONFIGS[name]
    torch.manual_seed(seed)
    layer = cls(**{**kwargs, **overrides})
    with torch.no_grad():
        for pname, p in layer.named_parameters():
            if pname.endswith("norm.weight") or pname == "D":
                p.uniform_(0.5, 1.5)
            elif pname.endswith("bias") and pname not in ("dt_bias", "out_proj.bias"):
                p.uniform_(-0.3, 0.3)
    return layer


def hidden_size(layer) -> int:
    return layer.hidden_size if isinstance(layer, GatedDeltaNet) else layer.d_model


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def assert_states_close(a: FastWeightState, b: FastWeightState, tol: float = 1e-5) -> None:
    assert rel_err(a.recurrent, b.recurrent) < tol
    assert len(a.conv) == len(b.conv)
    for ca, cb in zip(a.conv, b.conv, strict=True):
        assert rel_err(ca, cb) < tol


# ----------------------------------------------------------------------------- references


def _params(layer) -> dict[str, torch.Tensor]:
    return {n: p.detach().double() for n, p in layer.named_parameters()}


def _linear(P, name, x):
    y = x @ P[f"{name}.weight"].T
    return y + P[f"{name}.bias"] if f"{name}.bias" in P else y


def _causal_conv_silu(P, name, u):
    """Depthwise causal conv from a zero state, as torch.nn.Conv1d with padding W-1, then SiLU."""
    weight = P[f"{name}.weight"]
    width = weight.shape[-1]
    y = F.conv1d(u.transpose(1, 2), weight, P.get(f"{name}.bias"), padding=width - 1, groups=u.shape[-1])
    return F.silu(y[..., : u.shape[1]].transpose(1, 2))


def gdn_reference(layer: GatedDeltaNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fla GatedDeltaNet forward from a zero state, token by token: (y, final recurrent state)."""
    P, x = _params(layer), x.double()
    if layer.use_short_conv:
        q = _causal_conv_silu(P, "q_conv1d", _linear(P, "q_proj", x))
        k = _causal_conv_silu(P, "k_conv1d", _linear(P, "k_proj", x))
        v = _causal_conv_silu(P, "v_conv1d", _linear(P, "v_proj", x))
    else:
        q, k, v = (F.silu(_linear(P, n, x)) for n in ("q_proj", "k_proj", "v_proj"))
    batch, steps, _ = x.shape
    H, HV, K, V = layer.num_heads, layer.num_v_heads, layer.head_k_dim, layer.head_v_dim
    q, k, v = q.view(batch, steps, H, K), k.view(batch, steps, H, K), v.view(batch, steps, HV, V)
    beta = torch.sigmoid(_linear(P, "b_proj", x)) * (2.0 if layer.allow_neg_eigval else 1.0)
    g = -P["A_log"].exp() * F.softplus(_linear(P, "a_proj", x) + P["dt_bias"])

    o = torch.zeros(batch, steps, HV, V, dtype=torch.float64)
    S = torch.zeros(batch, HV, K, V, dtype=torch.float64)
    for hv in range(HV):
        h = hv // (HV // H)  # each q/k head serves consecutive value heads
        for t in range(steps):
            qt = q[:, t, h] / torch.sqrt((q[:, t, h] ** 2).sum(-1, keepdim=True) + 1e-6)
            kt = k[:, t, h] / torch.sqrt((k[:, t, h] ** 2).sum(-1, keepdim=True) + 1e-6)
            S[:, hv] = S[:, hv] * g[:, t, hv].exp()[:, None, None]
            u = beta[:, t, hv, None] * (v[:, t, hv] - torch.einsum("bkv,bk->bv", S[:, hv], kt))
            S[:, hv] = S[:, hv] + kt[:, :, None] * u[:, None, :]
            o[:, t, hv] = torch.einsum("bkv,bk->bv", S[:, hv], qt * K**-0.5)

    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + layer.o_norm.eps) * P["o_norm.weight"]
    if layer.use_gate:
        o = o * F.silu(_linear(P, "g_proj", x).view(batch, steps, HV, V))
    return _linear(P, "o_proj", o.flatten(-2)), S


def mamba2_reference(layer: Mamba2, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mamba_ssm Mamba2 forward from a zero state, token by token: (out, final SSM state)."""
    P, u = _params(layer), u.double()
    batch, steps, _ = u.shape
    H, Pd, G, N = layer.nheads, layer.headdim, layer.ngroups, layer.d_state
    z0, x0, z, xBC, dt = torch.split(
        _linear(P, "in_proj", u), [layer.d_mlp, layer.d_mlp, layer.d_ssm, layer.conv_dim, H], dim=-1
    )
    x, Bm, Cm = torch.split(_causal_conv_silu(P, "conv1d", xBC), [layer.d_ssm, G * N, G * N], dim=-1)
    x, Bm, Cm = x.view(batch, steps, H, Pd), Bm.view(batch, steps, G, N), Cm.view(batch, steps, G, N)
    dt = F.softplus(dt + P["dt_bias"]).clamp(*layer.dt_limit)
    A = -P["A_log"].exp()
    D = P["D"].view(H, Pd) if layer.D_has_hdim else P["D"][:, None]

    y = torch.zeros(batch, steps, H, Pd, dtype=torch.float64)
    S = torch.zeros(batch, H, Pd, N, dtype=torch.float64)
    for h in range(H):
        grp = h // (H // G)
        for t in range(steps):
            decay = torch.exp(dt[:, t, h] * A[h])[:, None, None]
            S[:, h] = decay * S[:, h] + dt[:, t, h, None, None] * x[:, t, h, :, None] * Bm[:, t, grp, None, :]
            y[:, t, h] = torch.einsum("bpn,bn->bp", S[:, h], Cm[:, t, grp]) + D[h] * x[:, t, h]
    y = y.flatten(-2)
    if layer.rmsnorm:
        gate = F.silu(z)
        if not layer.norm_before_gate:
            y = y * gate
        grouped = y.unflatten(-1, (G, -1))
        y = (grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + 1e-5)).flatten(-2)
        y = y * P["norm.weight"]
        if layer.norm_before_gate:
            y = y * gate
    else:
        y = y * F.silu(z)
    if layer.d_mlp > 0:
        y = torch.cat([F.silu(z0) * x0, y], dim=-1)
    return _linear(P, "out_proj", y), S


def reference(layer, x):
    return gdn_reference(layer, x) if isinstance(layer, GatedDeltaNet) else mamba2_reference(layer, x)


# ----------------------------------------------------------------------------- math and decoding


@pytest.mark.parametrize("name", ALL)
def test_matches_upstream_math(name):
    layer = make_layer(name)
    x = torch.randn(B, T, hidden_size(layer))
    with torch.no_grad():
        y, state = layer(x)
    y_ref, s_ref = reference(layer, x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(state.recurrent, s_ref) < 1e-5
    assert state.recurrent.dtype == torch.float32


@pytest.mark.parametrize("name", ALL)
def test_one_call_equals_token_by_token_decode(name):
    layer = make_layer(name)
    x = torch.randn(B, T, hidden_size(layer))
    with torch.no_grad():
        y_full, s_full = layer(x)
        state, ys = layer.init_state(B), []
        for t in range(T):  # T == 1 with a state: the step kernels
            y_t, state = layer(x[:, t : t + 1], state)
            ys.append(y_t)
    assert rel_err(torch.cat(ys, dim=1), y_full) < 1e-5
    assert_states_close(state, s_full)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("cuts", [(1,), (4,), (2, 3, 9), (1, 2, 3, 4, 10)])
def test_split_anywhere_with_state_carried(name, cuts):
    layer = make_layer(name)
    x = torch.randn(B, T, hidden_size(layer))
    with torch.no_grad():
        y_full, s_full = layer(x)
        state, ys = None, []
        for start, stop in zip((0, *cuts), (*cuts, T), strict=True):
            y_part, state = layer(x[:, start:stop], state)
            ys.append(y_part)
    assert rel_err(torch.cat(ys, dim=1), y_full) < 1e-5
    assert_states_close(state, s_full)


@pytest.mark.parametrize("name", ["gdn-gva", "mamba2-groups"])
def test_single_token_without_state_equals_step_from_zero_state(name):
    layer = make_layer(name)
    x = torch.randn(B, 1, hidden_size(layer))
    with torch.no_grad():
        y_chunk, s_chunk = layer(x)  # no state: chunked kernels
        y_step, s_step = layer(x, layer.init_state(B))  # zero state: step kernels
    assert rel_err(y_step, y_chunk) < 1e-5
    assert_states_close(s_step, s_chunk)


def test_gdn_modes_agree():
    chunk = make_layer("gdn-gva", mode="chunk")
    recurrent = make_layer("gdn-gva", mode="fused_recurrent")
    recurrent.load_state_dict(chunk.state_dict())
    x = torch.randn(B, T, 32)
    with torch.no_grad():
        (y1, s1), (y2, s2) = chunk(x), recurrent(x)
    assert rel_err(y1, y2) < 1e-5
    assert_states_close(s1, s2)


# ----------------------------------------------------------------------------- padding


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "carried-state"])
def test_left_padding_is_invisible(name, with_state):
    """Row b is left-padded by pads[b] NaN tokens: the real positions' outputs and the final
    state equal those of the unpadded row, padded outputs are zero, and decoding continues
    identically. With a carried state the pads must not push the conv state out either."""
    layer = make_layer(name)
    dim, pads = hidden_size(layer), [0, 3, T - 1]
    x = torch.randn(len(pads), T, dim)
    mask = torch.ones(len(pads), T, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
        x[b, :p] = float("nan")  # whatever a pad holds must not leak into outputs or state
    prefix = torch.randn(len(pads), 5, dim)
    nxt = torch.randn(len(pads), 1, dim)
    with torch.no_grad():
        state = layer(prefix)[1] if with_state else None
        y, s = layer(x, state, attention_mask=mask)
        y_next, s_next = layer(nxt, s)
        for b, p in enumerate(pads):
            row_state = None if state is None else state.index_select(torch.tensor([b]))
            y_row, s_row = layer(x[b : b + 1, p:], row_state)
            assert rel_err(y[b : b + 1, p:], y_row) < 1e-5
            assert torch.count_nonzero(y[b, :p]) == 0
            assert_states_close(s.index_select(torch.tensor([b])), s_row)
            y_next_row, _ = layer(nxt[b : b + 1], s_row)
            assert rel_err(y_next[b : b + 1], y_next_row) < 1e-5


@pytest.mark.parametrize("name", ["gdn-gva", "gdn-noconv", "mamba2-variants"])
def test_padding_anywhere_equals_dropping_the_padded_tokens(name):
    layer = make_layer(name)
    x = torch.randn(2, T, hidden_size(layer))
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[0, [2, 3, 7]] = False  # holes
    mask[1, -4:] = False  # right padding
    with torch.no_grad():
        y, s = layer(x, attention_mask=mask)
        for b in range(2):
            y_row, s_row = layer(x[b : b + 1, mask[b]])
            assert rel_err(y[b, mask[b]], y_row[0]) < 1e-5
            assert torch.count_nonzero(y[b, ~mask[b]]) == 0
            assert_states_close(s.index_select(torch.tensor([b])), s_row)


@pytest.mark.parametrize("name", ["gdn-gva", "mamba2-groups"])
def test_padded_decode_step_leaves_the_state_unchanged(name):
    layer = make_layer(name)
    dim = hidden_size(layer)
    with torch.no_grad():
        _, state = layer(torch.randn(2, 5, dim))
        x = torch.randn(2, 1, dim)
        x[0] = float("inf")
        y, new = layer(x, state, attention_mask=torch.tensor([[0], [1]]))
    assert torch.equal(new.recurrent[0], state.recurrent[0])
    assert all(torch.equal(n[0], o[0]) for n, o in zip(new.conv, state.conv, strict=True))
    assert not torch.equal(new.recurrent[1], state.recurrent[1])
    assert torch.count_nonzero(y[0]) == 0 and torch.count_nonzero(y[1]) > 0


def test_full_length_mask_is_cut_to_the_last_tokens():
    """transformers passes the mask of the whole sequence during cached decoding."""
    layer = make_layer("gdn-gva")
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        y_long, _ = layer(x, attention_mask=torch.ones(2, 9))
        y, _ = layer(x)
    assert torch.equal(y_long, y)


# ----------------------------------------------------------------------------- training and dtypes


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter_and_the_initial_state(name):
    layer = make_layer(name)
    dim = hidden_size(layer)
    with torch.no_grad():
        _, state = layer(torch.randn(B, 4, dim))
    state = FastWeightState(state.recurrent.requires_grad_(), tuple(c.requires_grad_() for c in state.conv))
    y, new = layer(torch.randn(B, 6, dim), state)
    (y.square().sum() + new.recurrent.square().sum()).backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, pname
    assert state.recurrent.grad is not None and torch.count_nonzero(state.recurrent.grad) > 0
    for c in state.conv:
        assert c.grad is not None and torch.count_nonzero(c.grad) > 0


@pytest.mark.parametrize("name", ALL)
def test_zero_init_output_makes_a_residual_block_the_identity(name):
    layer = make_layer(name, zero_init_output=True)
    x = torch.randn(B, T, hidden_size(layer))
    with torch.no_grad():
        y, state = layer(x)
    assert torch.count_nonzero(y) == 0
    assert torch.equal(x + y, x)
    assert torch.count_nonzero(state.recurrent) > 0  # the fast weights still learn from the input
    plain = make_layer(name)
    assert torch.count_nonzero(plain(x)[0]) > 0


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_runs_close_to_float32(name):
    layer = make_layer(name)
    x = torch.randn(B, T, hidden_size(layer))
    with torch.no_grad():
        y32, _ = layer(x)
        layer = layer.to(torch.bfloat16)
        y16, state = layer(x.bfloat16())
        y_step, state_step = layer(x[:, :1].bfloat16(), state)
    assert y16.dtype == torch.bfloat16 and y_step.dtype == torch.bfloat16
    assert state.recurrent.dtype == torch.float32 and state_step.recurrent.dtype == torch.float32
    assert all(c.dtype == torch.bfloat16 for c in state.conv)
    assert torch.isfinite(y16).all() and torch.isfinite(y_step).all()
    assert rel_err(y16, y32) < 5e-2


# ----------------------------------------------------------------------------- validation


def test_state_from_another_layer_shape_is_rejected():
    gdn, mamba = make_layer("gdn-gva"), make_layer("mamba2-groups")
    x = torch.randn(B, 3, 32)
    with pytest.raises(
        ValueError, match=r"state does not fit GatedDeltaNet.*expected recurrent\+conv shapes"
    ):
        gdn(x, mamba.init_state(B))
    with pytest.raises(ValueError, match=r"state does not fit Mamba2.*\[2, 8, 8, 8\]"):
        mamba(x, gdn.init_state(B))
    with pytest.raises(ValueError, match="state does not fit GatedDeltaNet"):
        gdn(x, gdn.init_state(B + 1))  # another batch size
    with pytest.raises(ValueError, match="must be a FastWeightState"):
        gdn(x, gdn.init_state(B).recurrent)


@pytest.mark.parametrize("name", ["gdn-gva", "mamba2-groups"])
def test_bad_inputs_are_rejected_with_the_expected_shape(name):
    layer = make_layer(name)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \[B, T, 32\]"):
        layer(torch.randn(B, 3, 31))
    with pytest.raises(ValueError, match=r"hidden_states must have shape \[B, T, 32\]"):
        layer(torch.randn(3, 32))
    with pytest.raises(ValueError, match="at least one token"):
        layer(torch.randn(B, 0, 32))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[2, 3\]"):
        layer(torch.randn(B, 3, 32), attention_mask=torch.ones(B, 2))


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="num_v_heads=3 must be a multiple of num_heads=2"):
        GatedDeltaNet(hidden_size=16, head_dim=4, num_heads=2, num_v_heads=3)
    with pytest.raises(ValueError, match="mode must be"):
        GatedDeltaNet(hidden_size=16, head_dim=4, num_heads=2, mode="parallel")
    with pytest.raises(ValueError, match="must be divisible by headdim"):
        Mamba2(d_model=16, d_state=4, headdim=5)
    with pytest.raises(ValueError, match="divisible by ngroups"):
        Mamba2(d_model=16, d_state=4, headdim=8, ngroups=3)


# ----------------------------------------------------------------------------- upstream names


def _shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_gated_deltanet_state_dict_has_fla_names_and_shapes():
    with torch.device("meta"):  # fla's defaults, without allocating 25M parameters
        layer = GatedDeltaNet()
        no_conv_no_gate = GatedDeltaNet(
            hidden_size=64, head_dim=16, num_heads=2, use_gate=False, use_short_conv=False
        )
        gva = GatedDeltaNet(
            hidden_size=64, head_dim=16, num_heads=2, num_v_heads=4, expand_v=1, conv_bias=True
        )
    assert _shapes(layer) == {
        "q_proj.weight": (1536, 2048),
        "k_proj.weight": (1536, 2048),
        "v_proj.weight": (3072, 2048),
        "a_proj.weight": (6, 2048),
        "b_proj.weight": (6, 2048),
        "A_log": (6,),
        "dt_bias": (6,),
        "q_conv1d.weight": (1536, 1, 4),
        "k_conv1d.weight": (1536, 1, 4),
        "v_conv1d.weight": (3072, 1, 4),
        "g_proj.weight": (3072, 2048),
        "o_norm.weight": (512,),
        "o_proj.weight": (2048, 3072),
    }
    assert _shapes(no_conv_no_gate) == {
        "q_proj.weight": (32, 64),
        "k_proj.weight": (32, 64),
        "v_proj.weight": (64, 64),
        "a_proj.weight": (2, 64),
        "b_proj.weight": (2, 64),
        "A_log": (2,),
        "dt_bias": (2,),
        "o_norm.weight": (32,),
        "o_proj.weight": (64, 64),
    }
    assert _shapes(gva) == {
        "q_proj.weight": (32, 64),
        "k_proj.weight": (32, 64),
        "v_proj.weight": (64, 64),
        "a_proj.weight": (4, 64),
        "b_proj.weight": (4, 64),
        "A_log": (4,),
        "dt_bias": (4,),
        "q_conv1d.weight": (32, 1, 4),
        "q_conv1d.bias": (32,),
        "k_conv1d.weight": (32, 1, 4),
        "k_conv1d.bias": (32,),
        "v_conv1d.weight": (64, 1, 4),
        "v_conv1d.bias": (64,),
        "g_proj.weight": (64, 64),
        "o_norm.weight": (16,),
        "o_proj.weight": (64, 64),
    }
    assert layer.init_state(2, device="meta").shapes() == (
        (2, 6, 256, 512),
        (2, 1536, 3),
        (2, 1536, 3),
        (2, 3072, 3),
    )


def test_mamba2_state_dict_has_mamba_ssm_names_and_shapes():
    with torch.device("meta"):
        layer = Mamba2(d_model=768)  # mamba_ssm defaults: d_state 128, expand 2, headdim 64
        variant = Mamba2(
            d_model=64,
            d_state=16,
            headdim=16,
            ngroups=2,
            d_ssm=96,
            D_has_hdim=True,
            rmsnorm=True,
            bias=True,
            conv_bias=False,
        )
        no_norm = Mamba2(d_model=64, d_state=16, headdim=16, rmsnorm=False)
    assert _shapes(layer) == {
        "dt_bias": (24,),
        "A_log": (24,),
        "D": (24,),
        "in_proj.weight": (2 * 1536 + 2 * 128 + 24, 768),  # [z, x, B, C, dt]
        "conv1d.weight": (1536 + 2 * 128, 1, 4),  # over xBC
        "conv1d.bias": (1536 + 2 * 128,),
        "norm.weight": (1536,),
        "out_proj.weight": (768, 1536),
    }
    assert _shapes(variant) == {
        "dt_bias": (6,),
        "A_log": (6,),
        "D": (96,),
        "in_proj.weight": (2 * 128 + 2 * 2 * 16 + 6, 64),  # [z0, x0, z, x, B, C, dt]
        "in_proj.bias": (2 * 128 + 2 * 2 * 16 + 6,),
        "conv1d.weight": (96 + 2 * 2 * 16, 1, 4),
        "norm.weight": (96,),
        "out_proj.weight": (64, 128),
        "out_proj.bias": (64,),
    }
    assert "norm.weight" not in _shapes(no_norm)
    assert layer.init_state(2, device="meta").shapes() == ((2, 24, 64, 128), (2, 1792, 3))


def test_decay_parameters_are_initialised_like_upstream():
    torch.manual_seed(0)
    gdn = GatedDeltaNet(hidden_size=64, head_dim=8, num_heads=64, expand_v=1)
    mamba = Mamba2(d_model=256, d_state=4, headdim=8, A_init_range=(2, 4), dt_min=0.01, dt_max=0.02)
    for layer, (a_low, a_high), (dt_low, dt_high) in [
        (gdn, (0, 16), (1e-3, 0.1)),
        (mamba, (2, 4), (0.01, 0.02)),
    ]:
        A, dt = layer.A_log.detach().exp(), F.softplus(layer.dt_bias.detach())
        assert A.dtype == dt.dtype == torch.float32
        assert (A >= a_low).all() and (A <= a_high).all() and A.std() > 0
        assert (dt >= dt_low * (1 - 1e-5)).all() and (dt <= dt_high * (1 + 1e-5)).all()
        # log-uniform: log dt spreads over the whole range
        assert math.log(dt.max() / dt.min()) > 0.5 * math.log(dt_high / dt_low)
    assert torch.equal(mamba.D.detach(), torch.ones(mamba.nheads))
    assert torch.equal(mamba.norm.weight.detach(), torch.ones(512))


# ----------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu(name):
    layer = make_layer(name)
    x = torch.randn(B, 70, hidden_size(layer))
    mask = torch.ones(B, 70, dtype=torch.long)
    mask[0, :5] = 0
    with torch.no_grad():
        y_cpu, s_cpu = layer(x, attention_mask=mask)
        step_cpu, _ = layer(x[:, :1], s_cpu)
        layer = layer.cuda()
        y_gpu, s_gpu = layer(x.cuda(), attention_mask=mask.cuda())
        step_gpu, _ = layer(x[:, :1].cuda(), s_gpu)
    assert rel_err(y_gpu.cpu(), y_cpu) < 2e-3
    assert rel_err(s_gpu.recurrent.cpu(), s_cpu.recurrent) < 2e-3
    assert rel_err(step_gpu.cpu(), step_cpu) < 2e-3

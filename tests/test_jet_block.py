"""JetBlock (Jet-Nemotron's fast-weight mixer): names, init, numerics against an independent
float64 reference and against the upstream fixture, state carrying, padding, dtypes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from sleep_retrofit.layers import FastWeightState
from sleep_retrofit.layers.jet_block import JetBlock

HIDDEN = 64
# The jet_nemotron_tiny fixture's JetBlock: 2 heads x 16, expand_v 2, conv 4, reduction 8.
TINY = dict(hidden_size=HIDDEN, num_heads=2, head_dim=16, expand_v=2, conv_size=4, generator_reduction=8)

UPSTREAM_SHAPES = {
    "q_proj.weight": (32, 64),
    "k_proj.weight": (32, 64),
    "v_proj.weight": (64, 64),
    "b_proj.weight": (2, 64),
    "a_proj.weight": (2, 64),
    "A_log": (2,),
    "dt_bias": (2,),
    "dynamic_conv1d.kernel_generator.w1.weight": (8, 64),
    "dynamic_conv1d.kernel_generator.w2.weight": (256, 8),
    "dynamic_conv1d.kernel_generator.w2.bias": (256,),
    "g_proj.weight": (64, 64),
    "o_norm.weight": (32,),
    "o_proj.weight": (64, 64),
}


def make_block(seed: int = 0, **overrides) -> JetBlock:
    """A block whose every path matters: random (non-zero) kernel generator and norm weights."""
    torch.manual_seed(seed)
    block = JetBlock(**{**TINY, **overrides})
    with torch.no_grad():
        gen = block.dynamic_conv1d.kernel_generator
        gen.w1.weight.normal_(0, 0.3)
        gen.w2.weight.normal_(0, 0.3)
        gen.w2.bias.normal_(0, 0.3)
        block.o_norm.weight.normal_(1.0, 0.1)
    return block.eval()


def reference_jet_block(block: JetBlock, x: torch.Tensor) -> torch.Tensor:
    """The JetBlock equations of architectures.md, token by token in float64 (no kernels)."""
    p = {k: v.double() for k, v in block.state_dict().items()}
    x = x.double()
    B, T, _ = x.shape
    H, K, V, W = block.num_heads, block.head_k_dim, block.head_v_dim, block.conv_size
    q = F.silu(x @ p["q_proj.weight"].T).view(B, T, H, K)
    k = F.silu(x @ p["k_proj.weight"].T).view(B, T, H, K)
    v_raw = x @ p["v_proj.weight"].T  # [B, T, D]
    hidden = F.silu(x @ p["dynamic_conv1d.kernel_generator.w1.weight"].T)
    flat = (
        hidden @ p["dynamic_conv1d.kernel_generator.w2.weight"].T
        + p["dynamic_conv1d.kernel_generator.w2.bias"]
    )
    kernels = flat.view(B, T, block.value_dim, W)  # channel-major: flat[d * W + i]
    beta = torch.sigmoid(x @ p["b_proj.weight"].T)
    g = -p["A_log"].exp() * F.softplus(x @ p["a_proj.weight"].T + p["dt_bias"])
    out = torch.zeros(B, T, H, V, dtype=torch.float64)
    for b in range(B):
        S = torch.zeros(H, K, V, dtype=torch.float64)
        for t in range(T):
            conv = torch.zeros(block.value_dim, dtype=torch.float64)
            for i in range(W):  # tap W-1 is the current token
                src = t - (W - 1) + i
                if src >= 0:
                    conv += kernels[b, t, :, i] * v_raw[b, src]
            v = F.silu(conv).view(H, V)
            for h in range(H):
                qh = q[b, t, h] / torch.sqrt((q[b, t, h] ** 2).sum() + 1e-6) * K**-0.5
                kh = k[b, t, h] / torch.sqrt((k[b, t, h] ** 2).sum() + 1e-6)
                S[h] = S[h] * torch.exp(g[b, t, h])
                u = beta[b, t, h] * (v[h] - S[h].T @ kh)
                S[h] = S[h] + torch.outer(kh, u)
                out[b, t, h] = S[h].T @ qh
    normed = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + block.norm_eps) * p["o_norm.weight"]
    gate = (x @ p["g_proj.weight"].T).view(B, T, H, V)
    return (normed * F.silu(gate)).reshape(B, T, -1) @ p["o_proj.weight"].T


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 2e-5, rtol: float = 1e-4) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def close_state(a: FastWeightState, b: FastWeightState, atol: float = 2e-5) -> None:
    close(a.recurrent, b.recurrent, atol=atol)
    assert len(a.conv) == len(b.conv) == 1
    close(a.conv[0], b.conv[0], atol=atol)


# --------------------------------------------------------------------------------------------- names / init


def test_state_dict_names_and_shapes_are_upstreams() -> None:
    block = JetBlock(**TINY)
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == UPSTREAM_SHAPES


def test_upstream_init() -> None:
    torch.manual_seed(0)
    block = JetBlock(hidden_size=256, num_heads=64, head_dim=16, expand_v=2, initializer_range=0.02)
    gen = block.dynamic_conv1d.kernel_generator
    assert torch.count_nonzero(gen.w1.weight) == 0 and torch.count_nonzero(gen.w2.weight) == 0
    assert 0.015 < gen.w2.bias.std().item() < 0.025  # N(0, initializer_range), 8192 samples
    A = block.A_log.exp()
    assert bool((A > 0).all() and (A < 16).all())
    dt = F.softplus(block.dt_bias)
    assert bool((dt > 1e-3 - 1e-6).all() and (dt < 0.1 + 1e-6).all())
    assert torch.equal(block.o_norm.weight, torch.ones(block.head_v_dim))
    assert block.A_log._no_weight_decay and block.dt_bias._no_weight_decay
    # With zero generator weights the dynamic conv is the static conv held in w2.bias.
    kernels = block.dynamic_conv1d.kernels(torch.randn(2, 3, 256))
    assert torch.equal(kernels, gen.w2.bias.view(block.value_dim, 4).expand(2, 3, -1, -1))


def test_real_2b_sizes() -> None:
    """Jet-Nemotron-2B: 12 heads x 96, expand_v 2.6666666667 -> head_v_dim 256, value_dim 3072."""
    block = JetBlock(hidden_size=1536, num_heads=12, head_dim=96, expand_v=2.6666666667, norm_eps="1e-5")
    assert (block.key_dim, block.value_dim, block.head_v_dim) == (1152, 3072, 256)
    assert block.dynamic_conv1d.kernel_generator.w2.weight.shape == (3072 * 4, 384)
    assert block.norm_eps == 1e-5


def test_zero_init_output_is_identity_residual() -> None:
    block = JetBlock(**TINY, zero_init_output=True)
    assert torch.count_nonzero(block.o_proj.weight) == 0
    x = torch.randn(2, 7, HIDDEN)
    y, state = block(x)
    assert torch.equal(x + y, x)
    assert state.recurrent.abs().sum() > 0  # the fast weights still learn from the input


# --------------------------------------------------------------------------------------------- numerics


def test_matches_float64_reference() -> None:
    block = make_block(1)
    x = torch.randn(2, 11, HIDDEN)
    y, _ = block(x)
    close(y.double(), reference_jet_block(block, x), atol=2e-5)


def test_fixture_layer0_matches_upstream(fixtures_dir) -> None:
    """Decoder layer 0 of jet_nemotron_tiny (a jet layer) rebuilt around our JetBlock reproduces the
    upstream hidden state after that layer."""
    weights = load_file(str(fixtures_dir / "jet_nemotron_tiny" / "model.safetensors"))
    ref = load_file(str(fixtures_dir / "jet_nemotron_tiny" / "reference.safetensors"))
    block = JetBlock(**TINY, norm_eps=1e-5)
    prefix = "model.layers.0.self_attn."
    block.load_state_dict(
        {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True
    )

    def rms(x, name):
        return weights[name] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    h = ref["hidden_states"][0]
    h = h + block(rms(h, "model.layers.0.input_layernorm.weight"))[0]
    m = rms(h, "model.layers.0.post_attention_layernorm.weight")
    gate, up, down = (weights[f"model.layers.0.mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
    h = h + (F.silu(m @ gate.T) * (m @ up.T)) @ down.T
    close(h, ref["hidden_states"][1], atol=5e-5)


def test_decode_steps_equal_full_forward() -> None:
    block = make_block(2)
    x = torch.randn(2, 13, HIDDEN)
    y_full, s_full = block(x)
    y, state = block(x[:, :5])
    outs = [y]
    for t in range(5, 13):
        y_t, state = block(x[:, t : t + 1], state)
        outs.append(y_t)
    close(torch.cat(outs, dim=1), y_full)
    close_state(state, s_full)


def test_first_token_without_state_and_init_state() -> None:
    block = make_block(3)
    x = torch.randn(3, 6, HIDDEN)
    y_full, s_full = block(x)
    y0, _ = block(x[:, :1])  # T=1, no state: the sequence path
    close(y0, y_full[:, :1])
    y_zero, s_zero = block(x, block.init_state(3))
    close(y_zero, y_full)
    close_state(s_zero, s_full)
    state = block.init_state(3)
    assert state.recurrent.dtype == torch.float32 and state.shapes() == ((3, 2, 16, 32), (3, 64, 3))
    outs = []
    for t in range(6):  # every token through the step kernels
        y_t, state = block(x[:, t : t + 1], state)
        outs.append(y_t)
    close(torch.cat(outs, dim=1), y_full)


@settings(max_examples=12, deadline=None)
@given(split=st.integers(1, 19), seed=st.integers(0, 2**16))
def test_split_and_carry_equals_one_call(split: int, seed: int) -> None:
    block = make_block(4)
    x = torch.randn(2, 20, HIDDEN, generator=torch.Generator().manual_seed(seed))
    y_full, s_full = block(x)
    y_a, s_a = block(x[:, :split])
    y_b, s_b = block(x[:, split:], s_a)
    close(torch.cat([y_a, y_b], dim=1), y_full)
    close_state(s_b, s_full)


def test_gradients_reach_every_parameter_and_the_initial_state() -> None:
    block = make_block(5).train()
    state = block.init_state(2)
    state = FastWeightState(
        state.recurrent.normal_().requires_grad_(), (state.conv[0].normal_().requires_grad_(),)
    )
    y, new_state = block(torch.randn(2, 9, HIDDEN), state)
    (y.square().sum() + new_state.recurrent.sum()).backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert state.recurrent.grad.abs().sum() > 0 and state.conv[0].grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- padding


def test_left_padding_matches_unpadded() -> None:
    block = make_block(6)
    x = torch.randn(2, 10, HIDDEN)
    y_ref, s_ref = block(x)
    pads = (3, 0)
    xp = torch.randn(2, 13, HIDDEN)  # the pad positions hold arbitrary junk
    mask = torch.ones(2, 13, dtype=torch.long)
    for b, p in enumerate(pads):
        xp[b, p : p + 10] = x[b]
        mask[b, :p] = 0
        mask[b, p + 10 :] = 0
    y, state = block(xp, attention_mask=mask)
    for b, p in enumerate(pads):
        close(y[b, p : p + 10], y_ref[b])
        assert torch.count_nonzero(y[b][mask[b] == 0]) == 0
    close_state(state, s_ref)


@settings(max_examples=12, deadline=None)
@given(mask_bits=st.lists(st.booleans(), min_size=9, max_size=9), seed=st.integers(0, 2**16))
def test_padding_anywhere_equals_the_real_tokens_alone(mask_bits: list[bool], seed: int) -> None:
    """Wherever the pads are (and from a non-zero carried state), the output at real tokens and the
    new state equal running the real tokens alone; upstream's zeroing is only right for left padding."""
    block = make_block(7)
    gen = torch.Generator().manual_seed(seed)
    prefix, x = torch.randn(1, 5, HIDDEN, generator=gen), torch.randn(1, 9, HIDDEN, generator=gen)
    mask = torch.tensor([mask_bits], dtype=torch.long)
    _, carried = block(prefix)
    y, state = block(x, carried, attention_mask=mask)
    real = mask[0].bool()
    if real.any():
        y_ref, s_ref = block(x[:, real], carried)
        close(y[:, real], y_ref)
    else:
        s_ref = carried
    close_state(state, s_ref)
    assert torch.count_nonzero(y[:, ~real]) == 0


def test_padded_decode_step_leaves_state_unchanged() -> None:
    block = make_block(8)
    _, state = block(torch.randn(2, 6, HIDDEN))
    x = torch.randn(2, 1, HIDDEN)
    y, new_state = block(x, state, attention_mask=torch.tensor([[0], [1]]))
    assert torch.count_nonzero(y[0]) == 0
    assert torch.equal(new_state.recurrent[0], state.recurrent[0])
    assert torch.equal(new_state.conv[0][0], state.conv[0][0])
    y1, s1 = block(x[1:], state.index_select(torch.tensor([1])))
    close(y[1:], y1)
    close_state(new_state.index_select(torch.tensor([1])), s1)


def test_mask_of_ones_equals_no_mask() -> None:
    block = make_block(9)
    x = torch.randn(2, 8, HIDDEN)
    y, s = block(x)
    y1, s1 = block(x, attention_mask=torch.ones(2, 8))
    assert torch.equal(y, y1) and torch.equal(s.recurrent, s1.recurrent)


# ------------------------------------------------------------------------------------------ dtypes / errors


def test_bfloat16_runs_and_tracks_float32() -> None:
    block = make_block(10)
    x = torch.randn(2, 12, HIDDEN)
    y32, _ = block(x)
    block16 = make_block(10).to(torch.bfloat16)
    y16, state = block16(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16 and state.recurrent.dtype == torch.float32
    assert state.conv[0].dtype == torch.bfloat16
    assert torch.isfinite(y16).all()
    rel = (y16.float() - y32).norm() / y32.norm()
    assert rel < 0.05, rel
    y_step, _ = block16(x[:, :1].to(torch.bfloat16), block16.init_state(2))
    assert y_step.dtype == torch.bfloat16


def test_bad_inputs_raise_value_errors() -> None:
    block = JetBlock(**TINY)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \[B, T, 64\]"):
        block(torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="hidden_states"):
        block(torch.randn(5, 64))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        block(torch.randn(2, 5, 64), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="state does not fit JetBlock"):
        block(torch.randn(3, 5, 64), block.init_state(2))
    other = JetBlock(**{**TINY, "num_heads": 4})
    with pytest.raises(ValueError, match="expected recurrent\\+conv shapes"):
        block(torch.randn(2, 1, 64), other.init_state(2))
    with pytest.raises(ValueError, match="FastWeightState"):
        block(torch.randn(2, 1, 64), torch.zeros(2, 2, 16, 32))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 0}, "hidden_size must be a positive int"),
        ({"num_heads": 2.5}, "num_heads must be a positive int"),
        ({"expand_v": 1.03}, "expand_v=1.03 times head_dim=16"),
        ({"conv_size": 1}, "conv_size must be an int >= 2"),
        ({"generator_reduction": 1000}, "no kernel-generator units"),
        ({"mode": "parallel"}, "mode must be"),
    ],
)
def test_bad_construction_raises(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        JetBlock(**{**TINY, **overrides})


def test_expand_v_product_is_rounded_not_truncated() -> None:
    # 100 * 0.29 == 28.999999999999996 in floating point: the value size is 29, not 28.
    block = JetBlock(hidden_size=8, num_heads=1, head_dim=100, expand_v=0.29, generator_reduction=1)
    assert block.head_v_dim == 29 and block.value_dim == 29


@requires_cuda
def test_cuda_matches_cpu() -> None:
    """On CUDA the kernels may dispatch to fla; the block must still compute the same function."""
    block = make_block(11)
    x = torch.randn(2, 70, HIDDEN)
    y, state = block(x)
    cuda_block = make_block(11).cuda()
    y_cuda, state_cuda = cuda_block(x.cuda())
    close(y_cuda.cpu(), y, atol=1e-4, rtol=1e-3)
    close_state(state_cuda.to("cpu"), state, atol=1e-4)
    y_step, _ = cuda_block(x[:, :1].cuda(), cuda_block.init_state(2))
    close(y_step.cpu(), y[:, :1], atol=1e-4, rtol=1e-3)

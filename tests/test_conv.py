"""Causal depthwise convs (static and dynamic): torch Conv1d equivalence, the index convention,
state carry across any split, one-token steps, padding masks, bf16, argument errors, and the
CUDA dispatch against the CPU path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda
from helpers import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from sleep_retrofit.kernels import (
    causal_conv1d,
    causal_conv1d_step,
    dynamic_causal_conv1d,
    dynamic_causal_conv1d_step,
)

# derandomize: the same examples on every run, so CI never flakes on a lucky draw; the same
# properties were checked on thousands of random examples while writing the kernels.
FAST = settings(max_examples=25, deadline=None, derandomize=True)


def torch_reference(x, weight, bias=None, activation=None, initial_state=None):
    """Conv1d(groups=D) over [initial_state or zeros, x]: the definition we promise to match."""
    width = weight.shape[1]
    x_bdt = x.transpose(1, 2)
    if initial_state is None:
        padded = F.pad(x_bdt, (width - 1, 0))
    else:
        padded = torch.cat([initial_state, x_bdt], dim=-1)
    y = F.conv1d(padded, weight.unsqueeze(1), bias, groups=weight.shape[0])
    if activation == "silu":
        y = F.silu(y)
    return y.transpose(1, 2)


def random_splits(draw, length: int) -> list[int]:
    """Sorted cut points in (0, length), possibly none, possibly adjacent (pieces of 1 token)."""
    if length < 2:
        return []
    cuts = draw(st.lists(st.integers(1, length - 1), max_size=4, unique=True))
    return sorted(cuts)


def pieces(tensor: torch.Tensor, cuts: list[int], dim: int = 1) -> list[torch.Tensor]:
    bounds = [0, *cuts, tensor.shape[dim]]
    return [tensor.narrow(dim, a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


conv_shapes = st.tuples(
    st.integers(1, 3),  # B
    st.integers(1, 12),  # T
    st.integers(1, 6),  # D
    st.integers(1, 5),  # W
)


# ----------------------------------------------------------------------------- static conv


@FAST
@given(
    shape=conv_shapes,
    use_bias=st.booleans(),
    activation=st.sampled_from([None, "silu"]),
    seed=st.integers(0, 99),
)
def test_static_conv_equals_torch_conv1d(shape, use_bias, activation, seed):
    B, T, D, W = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    weight = torch.randn(D, W, generator=gen)
    bias = torch.randn(D, generator=gen) if use_bias else None
    state = torch.randn(B, D, W - 1, generator=gen)

    y, final = causal_conv1d(x, weight, bias, activation=activation)
    assert final is None
    assert rel_err(y, torch_reference(x, weight, bias, activation)) < 1e-5

    y, final = causal_conv1d(
        x, weight, bias, activation=activation, initial_state=state, output_final_state=True
    )
    assert rel_err(y, torch_reference(x, weight, bias, activation, state)) < 1e-5
    # The final state is the last W-1 inputs of [state, x]; for T < W-1 part of `state` shifts through.
    expected_final = torch.cat([state, x.transpose(1, 2)], dim=-1)[..., T:]
    assert torch.equal(final, expected_final)


def test_last_tap_multiplies_current_token():
    x = torch.zeros(1, 5, 1)
    x[0, 2, 0] = 1.0  # an impulse at t = 2
    weight = torch.tensor([[10.0, 20.0, 30.0]])  # W = 3
    y, _ = causal_conv1d(x, weight)
    # y_t = sum_i w[i] x_{t-2+i}: the impulse meets w[2] at t=2, w[1] at t=3, w[0] at t=4.
    assert y[0, :, 0].tolist() == [0.0, 0.0, 30.0, 20.0, 10.0]


def test_final_state_when_sequence_shorter_than_history():
    state = torch.arange(1.0, 5.0).reshape(1, 1, 4)  # W = 5, history 1,2,3,4
    x = torch.tensor([[[7.0], [8.0]]])  # T = 2 < W-1
    _, final = causal_conv1d(x, torch.ones(1, 5), initial_state=state, output_final_state=True)
    assert final[0, 0].tolist() == [3.0, 4.0, 7.0, 8.0]
    _, final = dynamic_causal_conv1d(x, torch.ones(1, 2, 1, 5), initial_state=state, output_final_state=True)
    assert final[0, 0].tolist() == [3.0, 4.0, 7.0, 8.0]


@st.composite
def split_case(draw):
    shape = draw(conv_shapes)
    return shape, random_splits(draw, shape[1]), draw(st.integers(0, 99)), draw(st.booleans())


@FAST
@given(case=split_case())
def test_static_conv_state_carry(case):
    (B, T, D, W), cuts, seed, use_initial = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    weight, bias = torch.randn(D, W, generator=gen), torch.randn(D, generator=gen)
    state = torch.randn(B, D, W - 1, generator=gen) if use_initial else None

    y_full, final_full = causal_conv1d(
        x, weight, bias, activation="silu", initial_state=state, output_final_state=True
    )
    outputs = []
    for piece in pieces(x, cuts):
        y, state = causal_conv1d(
            piece, weight, bias, activation="silu", initial_state=state, output_final_state=True
        )
        outputs.append(y)
    assert rel_err(torch.cat(outputs, dim=1), y_full) < 1e-5
    assert torch.equal(state, final_full)


def static_conv_run(shape, seed, dtype, mode):
    """(y, final_state, grads of (x, weight, bias, initial_state)) of one random case, run as one
    causal_conv1d call (mode "full") or as a loop of causal_conv1d_step calls (mode "steps")."""
    B, T, D, W = shape
    gen = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randn(*s, generator=gen).to(dtype).requires_grad_()
        for s in ((B, T, D), (D, W), (D,), (B, D, W - 1))
    ]
    x, weight, bias, state = inputs
    y_probe, s_probe = (
        torch.randn(B, T, D, generator=gen).to(dtype),
        torch.randn(B, D, W - 1, generator=gen).to(dtype),
    )
    if mode == "full":
        y, state = causal_conv1d(
            x, weight, bias, activation="silu", initial_state=state, output_final_state=True
        )
    else:
        outputs = []
        for t in range(T):
            y_t, state = causal_conv1d_step(x[:, t], state, weight, bias, activation="silu")
            outputs.append(y_t)
        y = torch.stack(outputs, dim=1)
    grads = torch.autograd.grad((y * y_probe).sum() + (state * s_probe).sum(), inputs, allow_unused=True)
    return y, state, [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads, strict=True)]


@FAST
@given(shape=conv_shapes, seed=st.integers(0, 99))
def test_static_steps_equal_sequence_values_and_grads(shape, seed):
    y_full, final_full, grads_full = static_conv_run(shape, seed, torch.float32, "full")
    y_steps, final_steps, grads_steps = static_conv_run(shape, seed, torch.float32, "steps")
    assert rel_err(y_steps, y_full) < 1e-5
    assert torch.equal(final_steps, final_full)
    # x and initial_state gradients sum at most W terms: direct comparison.
    for i in (0, 3):
        assert rel_err(grads_steps[i], grads_full[i]) < 1e-5
    # weight and bias gradients sum B*T signed terms, whose cancellation sets their float32
    # rounding: both paths must be as close to float64 as the one-call path is (or within 1e-5).
    _, _, grads_truth = static_conv_run(shape, seed, torch.float64, "full")
    for i in (1, 2):
        reference_error = rel_err(grads_full[i].double(), grads_truth[i])
        assert rel_err(grads_steps[i].double(), grads_truth[i]) <= max(1e-5, 4 * reference_error)


def test_empty_sequence_keeps_state():
    state = torch.randn(2, 3, 3)
    for y, final in (
        causal_conv1d(torch.randn(2, 0, 3), torch.randn(3, 4), initial_state=state, output_final_state=True),
        dynamic_causal_conv1d(
            torch.randn(2, 0, 3), torch.randn(2, 0, 3, 4), initial_state=state, output_final_state=True
        ),
    ):
        assert y.shape == (2, 0, 3)
        assert torch.equal(final, state)


def test_step_without_state_starts_from_zeros():
    x = torch.randn(2, 3)
    weight = torch.randn(3, 4)
    y, state = causal_conv1d_step(x, None, weight)
    y_seq, final = causal_conv1d(x[:, None], weight, output_final_state=True)
    assert torch.allclose(y, y_seq[:, 0]) and torch.equal(state, final)
    y, state = dynamic_causal_conv1d_step(x, weight.expand(2, 3, 4), None)
    assert torch.allclose(y, y_seq[:, 0]) and torch.equal(state, final)


def test_step_leaves_input_state_untouched():
    state = torch.randn(2, 3, 3)
    before = state.clone()
    causal_conv1d_step(torch.randn(2, 3), state, torch.randn(3, 4))
    dynamic_causal_conv1d_step(torch.randn(2, 3), torch.randn(2, 3, 4), state)
    assert torch.equal(state, before)


# ----------------------------------------------------------------------------- dynamic conv


@FAST
@given(shape=conv_shapes, activation=st.sampled_from([None, "silu"]), seed=st.integers(0, 99))
def test_dynamic_conv_with_fixed_kernel_equals_static(shape, activation, seed):
    B, T, D, W = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    weight = torch.randn(D, W, generator=gen)
    state = torch.randn(B, D, W - 1, generator=gen)
    kernels = weight.expand(B, T, D, W)
    y_dyn, f_dyn = dynamic_causal_conv1d(
        x, kernels, activation=activation, initial_state=state, output_final_state=True
    )
    y_static, f_static = causal_conv1d(
        x, weight, activation=activation, initial_state=state, output_final_state=True
    )
    assert rel_err(y_dyn, y_static) < 1e-5
    assert torch.equal(f_dyn, f_static)


@FAST
@given(shape=conv_shapes, seed=st.integers(0, 99))
def test_dynamic_conv_matches_per_token_definition(shape, seed):
    B, T, D, W = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    kernels = torch.randn(B, T, D, W, generator=gen)
    state = torch.randn(B, D, W - 1, generator=gen)
    history = torch.cat([state.transpose(1, 2), x], dim=1)  # [B, W-1+T, D]; x_t sits at W-1+t
    expected = torch.stack(
        [(kernels[:, t] * history[:, t : t + W].transpose(1, 2)).sum(-1) for t in range(T)], dim=1
    )
    y, _ = dynamic_causal_conv1d(x, kernels, initial_state=state)
    assert rel_err(y, expected) < 1e-5


@FAST
@given(case=split_case())
def test_dynamic_conv_state_carry(case):
    (B, T, D, W), cuts, seed, use_initial = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    kernels = torch.randn(B, T, D, W, generator=gen)
    state = torch.randn(B, D, W - 1, generator=gen) if use_initial else None

    y_full, final_full = dynamic_causal_conv1d(
        x, kernels, activation="silu", initial_state=state, output_final_state=True
    )
    outputs = []
    for x_piece, k_piece in zip(pieces(x, cuts), pieces(kernels, cuts), strict=True):
        y, state = dynamic_causal_conv1d(
            x_piece, k_piece, activation="silu", initial_state=state, output_final_state=True
        )
        outputs.append(y)
    assert rel_err(torch.cat(outputs, dim=1), y_full) < 1e-5
    assert torch.equal(state, final_full)


@FAST
@given(shape=conv_shapes, seed=st.integers(0, 99))
def test_dynamic_steps_equal_sequence_values_and_grads(shape, seed):
    B, T, D, W = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen, requires_grad=True)
    kernels = torch.randn(B, T, D, W, generator=gen, requires_grad=True)
    state0 = torch.randn(B, D, W - 1, generator=gen, requires_grad=True)
    y_probe, s_probe = torch.randn(B, T, D, generator=gen), torch.randn(B, D, W - 1, generator=gen)
    inputs = (x, kernels, state0)

    y_full, final_full = dynamic_causal_conv1d(
        x, kernels, activation="silu", initial_state=state0, output_final_state=True
    )
    grads_full = torch.autograd.grad((y_full * y_probe).sum() + (final_full * s_probe).sum(), inputs)

    state, outputs = state0, []
    for t in range(T):
        y_t, state = dynamic_causal_conv1d_step(x[:, t], kernels[:, t], state, activation="silu")
        outputs.append(y_t)
    y_steps = torch.stack(outputs, dim=1)
    grads_steps = torch.autograd.grad((y_steps * y_probe).sum() + (state * s_probe).sum(), inputs)

    assert rel_err(y_steps, y_full) < 1e-5
    assert torch.equal(state, final_full)
    for g_steps, g_full in zip(grads_steps, grads_full, strict=True):
        assert rel_err(g_steps, g_full) < 1e-5


# ----------------------------------------------------------------------------- padding mask


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_mask_removes_padded_positions(kind):
    gen = torch.Generator().manual_seed(0)
    B, T, D, W = 3, 9, 4, 4
    x = torch.randn(B, T, D, generator=gen)
    weight = torch.randn(D, W, generator=gen)
    kernels = torch.randn(B, T, D, W, generator=gen)
    lengths = [9, 5, 1]  # left padding: row b has T - lengths[b] pad tokens first
    mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        mask[b, T - n :] = 1

    def run(inputs, mask=None, row_kernels=None, state=None):
        if kind == "static":
            return causal_conv1d(
                inputs, weight, activation="silu", mask=mask, initial_state=state, output_final_state=True
            )
        return dynamic_causal_conv1d(
            inputs, row_kernels, activation="silu", mask=mask, initial_state=state, output_final_state=True
        )

    y, final = run(x, mask, kernels)
    # Garbage at padded positions changes nothing, outputs or state.
    noisy = x + 100.0 * (1 - mask).unsqueeze(-1) * torch.randn(B, T, D, generator=gen)
    y_noisy, final_noisy = run(noisy, mask, kernels)
    assert torch.equal(y * mask.unsqueeze(-1), y_noisy * mask.unsqueeze(-1))
    assert torch.equal(final, final_noisy)
    y_nan, final_nan = run(x.masked_fill(mask.unsqueeze(-1) == 0, float("nan")), mask, kernels)
    assert torch.equal(y_nan, y) and torch.equal(final_nan, final)
    # Real positions equal the same row run alone without padding (a fresh sequence).
    for b, n in enumerate(lengths):
        y_alone, final_alone = run(x[b : b + 1, T - n :], None, kernels[b : b + 1, T - n :])
        assert rel_err(y[b : b + 1, T - n :], y_alone) < 1e-5
        assert torch.equal(final[b : b + 1], final_alone)
    # A bool mask works the same as a float one.
    y_bool, _ = run(x, mask.bool(), kernels)
    assert torch.equal(y_bool, y)


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_bf16_close_to_fp32(kind):
    gen = torch.Generator().manual_seed(1)
    B, T, D, W = 2, 33, 16, 4
    x = torch.randn(B, T, D, generator=gen)
    state = torch.randn(B, D, W - 1, generator=gen)
    weight = torch.randn(D, W, generator=gen) * 0.5
    kernels = torch.randn(B, T, D, W, generator=gen) * 0.5
    if kind == "static":
        y32, f32 = causal_conv1d(x, weight, activation="silu", initial_state=state, output_final_state=True)
        y16, f16 = causal_conv1d(
            x.bfloat16(),
            weight.bfloat16(),
            activation="silu",
            initial_state=state.bfloat16(),
            output_final_state=True,
        )
        s16, _ = causal_conv1d_step(
            x[:, 0].bfloat16(), state.bfloat16(), weight.bfloat16(), activation="silu"
        )
    else:
        y32, f32 = dynamic_causal_conv1d(
            x, kernels, activation="silu", initial_state=state, output_final_state=True
        )
        y16, f16 = dynamic_causal_conv1d(
            x.bfloat16(),
            kernels.bfloat16(),
            activation="silu",
            initial_state=state.bfloat16(),
            output_final_state=True,
        )
        s16, _ = dynamic_causal_conv1d_step(
            x[:, 0].bfloat16(), kernels[:, 0].bfloat16(), state.bfloat16(), activation="silu"
        )
    assert y16.dtype == f16.dtype == s16.dtype == torch.bfloat16
    assert rel_err(y16.float(), y32) < 1e-2
    assert rel_err(f16.float(), f32) < 1e-2
    assert rel_err(s16.float(), y32[:, 0]) < 1e-2


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_argument_and_shape():
    x = torch.randn(2, 5, 4)
    weight = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, D\]"):
        causal_conv1d(torch.randn(2, 5), weight)
    with pytest.raises(ValueError, match=r"weight must have shape \[4, W\]"):
        causal_conv1d(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \[4\]"):
        causal_conv1d(x, weight, torch.randn(3))
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 4, 2\].*got \[2, 4, 3\]"):
        causal_conv1d(x, weight, initial_state=torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor, got dtype torch.int64"):
        causal_conv1d(torch.ones(2, 5, 4, dtype=torch.long), weight)
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\] = \[2, 5\]"):
        causal_conv1d(x, weight, mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match=r"activation must be None or 'silu'"):
        causal_conv1d(x, weight, activation="relu")
    with pytest.raises(ValueError, match=r"state must have shape \[2, 4, 2\]"):
        causal_conv1d_step(x[:, 0], torch.randn(2, 4, 4), weight)
    with pytest.raises(ValueError, match=r"kernels must have shape \[2, 5, 4, W\]"):
        dynamic_causal_conv1d(x, torch.randn(2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"kernels must be a floating-point tensor"):
        dynamic_causal_conv1d(x, torch.ones(2, 5, 4, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"kernel must have shape \[2, 4, W\]"):
        dynamic_causal_conv1d_step(x[:, 0], torch.randn(2, 3, 3), None)
    with pytest.raises(ValueError, match=r"state must have shape \[2, 4, 2\]"):
        dynamic_causal_conv1d_step(x[:, 0], torch.randn(2, 4, 3), torch.randn(4, 2))


# ----------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("dim", [16, 6])  # 16: channel-last library path; 6: layouts it cannot take
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_static_conv_matches_cpu(dim, dtype):
    gen = torch.Generator().manual_seed(2)
    B, T, W = 2, 37, 4
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    x = torch.randn(B, T, dim, generator=gen).to(dtype)
    weight, bias = torch.randn(dim, W, generator=gen).to(dtype), torch.randn(dim, generator=gen).to(dtype)
    state = torch.randn(B, dim, W - 1, generator=gen).to(dtype)
    mask = (torch.rand(B, T, generator=gen) > 0.2).float()
    probe = torch.randn(B, T, dim, generator=gen)
    for initial in (None, state):
        cpu_inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        gpu_inputs = [t.cuda().requires_grad_() for t in (x, weight, bias)]
        results = []
        for (xi, wi, bi), device in ((cpu_inputs, "cpu"), (gpu_inputs, "cuda")):
            s = None if initial is None else initial.to(device)
            y, final = causal_conv1d(
                xi, wi, bi, activation="silu", initial_state=s, output_final_state=True, mask=mask.to(device)
            )
            (y.float() * probe.to(device)).sum().backward()
            results.append(
                (y.float().cpu(), final.float().cpu(), [t.grad.float().cpu() for t in (xi, wi, bi)])
            )
        (y_cpu, f_cpu, g_cpu), (y_gpu, f_gpu, g_gpu) = results
        assert rel_err(y_gpu, y_cpu) < tol
        assert torch.equal(f_gpu, f_cpu)
        for a, b in zip(g_gpu, g_cpu, strict=True):
            assert rel_err(a, b) < tol * 10

    # Decoding step (inference: the library's in-place update path).
    with torch.no_grad():
        y_cpu, s_cpu = causal_conv1d_step(x[:, 0], state, weight, bias, activation="silu")
        y_gpu, s_gpu = causal_conv1d_step(
            x[:, 0].cuda(), state.cuda(), weight.cuda(), bias.cuda(), activation="silu"
        )
    assert rel_err(y_gpu.float().cpu(), y_cpu.float()) < tol
    assert torch.equal(s_gpu.cpu(), s_cpu)


@requires_cuda
def test_cuda_dynamic_conv_matches_cpu():
    gen = torch.Generator().manual_seed(3)
    B, T, D, W = 2, 21, 8, 4
    x, kernels = torch.randn(B, T, D, generator=gen), torch.randn(B, T, D, W, generator=gen)
    state = torch.randn(B, D, W - 1, generator=gen)
    y_cpu, f_cpu = dynamic_causal_conv1d(
        x, kernels, activation="silu", initial_state=state, output_final_state=True
    )
    y_gpu, f_gpu = dynamic_causal_conv1d(
        x.cuda(), kernels.cuda(), activation="silu", initial_state=state.cuda(), output_final_state=True
    )
    assert rel_err(y_gpu.cpu(), y_cpu) < 1e-5
    assert torch.equal(f_gpu.cpu(), f_cpu)


# ----------------------------------------------------------------------------- dispatch glue on CPU
# Stand-ins for the causal_conv1d library that enforce its documented argument contract
# (layouts, dtypes, in-place state update, state length W as in older releases), so the code
# that adapts our arguments to it runs here. The real library is compared on CUDA above.


class FakeCausalConv1d:
    def __init__(self):
        self.calls = {"causal_conv1d_fn": 0, "causal_conv1d_update": 0}

    def lookup(self, name, *tensors):
        return getattr(self, name) if name in self.calls else None

    def causal_conv1d_fn(self, x, weight, bias=None, initial_states=None, activation=None):
        self.calls["causal_conv1d_fn"] += 1
        dim, width = weight.shape
        assert x.dim() == 3 and x.shape[1] == dim, "x must be [B, D, T]"
        assert x.stride(2) == 1 or x.stride(1) == 1
        assert bias is None or bias.dtype == weight.dtype
        history = torch.zeros(x.shape[0], dim, width - 1, dtype=x.dtype)
        if initial_states is not None:
            assert x.stride(1) == 1 and dim % 8 == 0, "initial_states needs channel-last x"
            assert initial_states.stride(1) == 1, "initial_states must be channel-last"
            assert initial_states.dtype == x.dtype and initial_states.shape == (x.shape[0], dim, width - 1)
            history = initial_states
        y = F.conv1d(torch.cat([history, x], -1).float(), weight.float().unsqueeze(1), None, groups=dim)
        y = y if bias is None else y + bias.float()[:, None]
        return (F.silu(y) if activation == "silu" else y).to(x.dtype)

    def causal_conv1d_update(self, x, conv_state, weight, bias=None, activation=None):
        self.calls["causal_conv1d_update"] += 1
        assert conv_state.shape == (*x.shape, weight.shape[1]) and conv_state.dtype == x.dtype
        conv_state.copy_(torch.cat([conv_state[..., 1:], x.unsqueeze(-1)], dim=-1))
        y = (conv_state.float() * weight.float()).sum(-1)
        y = y if bias is None else y + bias.float()
        return (F.silu(y) if activation == "silu" else y).to(x.dtype)


@pytest.mark.parametrize("dim", [16, 6])
@pytest.mark.parametrize("use_state", [False, True])
def test_library_dispatch_adapts_arguments(monkeypatch, dim, use_state):
    import sleep_retrofit.kernels.conv as conv_module

    gen = torch.Generator().manual_seed(4)
    B, T, W = 2, 5, 4
    x, weight, bias = (
        torch.randn(B, T, dim, generator=gen),
        torch.randn(dim, W, generator=gen),
        torch.randn(dim),
    )
    state = torch.randn(B, dim, W - 1, generator=gen) if use_state else None
    mask = torch.ones(B, T)
    mask[1, :2] = 0
    expected = causal_conv1d(
        x, weight, bias, activation="silu", initial_state=state, output_final_state=True, mask=mask
    )
    step_expected = causal_conv1d_step(x[:, 0], state, weight, bias, activation="silu")

    fake = FakeCausalConv1d()
    monkeypatch.setattr(conv_module, "cuda_kernel", fake.lookup)
    y, final = causal_conv1d(
        x, weight, bias, activation="silu", initial_state=state, output_final_state=True, mask=mask
    )
    # With a state and D not a multiple of 8 the library cannot help: torch runs instead.
    assert fake.calls["causal_conv1d_fn"] == (0 if use_state and dim % 8 else 1)
    assert rel_err(y, expected[0]) < 1e-5 and torch.equal(final, expected[1])

    state_before = None if state is None else state.clone()
    y_step, new_state = causal_conv1d_step(x[:, 0], state, weight, bias, activation="silu")
    assert fake.calls["causal_conv1d_update"] == 1
    assert rel_err(y_step, step_expected[0]) < 1e-5 and torch.equal(new_state, step_expected[1])
    assert state is None or torch.equal(state, state_before)  # the in-place update hit a copy

    # Steps that need gradients cannot use the in-place, autograd-free update.
    causal_conv1d_step(x[:, 0], state, weight.requires_grad_(), bias, activation="silu")
    assert fake.calls["causal_conv1d_update"] == 1

"""Gated delta rule: chunked == recurrent == token-by-token steps == a float64 transcription of
the update rule (values, final states and gradients of every input, initial_state included);
state carry across any split; chunk size and chunk grouping do not change results; the
L2-norm and scale options; bf16; argument errors; and the CUDA paths (torch and fla)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda
from hypothesis import given, settings
from hypothesis import strategies as st

from sleep_retrofit.kernels import chunk_gated_delta_rule, gated_delta_rule_step, recurrent_gated_delta_rule
from sleep_retrofit.kernels import gated_delta_rule as gdn_module
from sleep_retrofit.kernels.backends import clear_kernel_cache, cuda_kernel

FAST = settings(max_examples=25, deadline=None)
TOL = 1e-5  # fp32 relative error budget (design invariant 1)
INPUT_NAMES = ("q", "k", "v", "g", "beta", "initial_state")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are empty)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.numel() == 0:
        return 0.0
    scale = expected.detach().abs().max().clamp_min(1e-30)
    return ((actual.detach().double() - expected.detach().double()).abs().max() / scale).item()


def make_inputs(B, T, H, K, V, *, seed, l2norm_in_kernel=False, dtype=torch.float32):
    """Inputs in the ranges a GDN / JetBlock layer produces: g = -softplus(.) (log decay <= 0),
    beta in (0, 1), keys unit-norm unless the kernel normalises them (the delta rule is only
    contractive for beta |k|^2 < 2), random initial state."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(B, T, H, K, generator=gen)
    if not l2norm_in_kernel:
        k = F.normalize(k, dim=-1)
    inputs = dict(
        q=torch.randn(B, T, H, K, generator=gen),
        k=k,
        v=torch.randn(B, T, H, V, generator=gen),
        g=-F.softplus(torch.randn(B, T, H, generator=gen)),
        beta=torch.rand(B, T, H, generator=gen),
        initial_state=torch.randn(B, H, K, V, generator=gen),
    )
    return {name: x.to(dtype) for name, x in inputs.items()}


def naive_float64(q, k, v, g, beta, initial_state=None, *, scale=None, l2norm=False):
    """The module docstring's update rule, written out once more in float64 (independent of the
    code under test, which shares its one-token math between step and recurrent)."""
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    B, T, H, K = q.shape
    if l2norm:
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    scale = K**-0.5 if scale is None else scale
    S = (
        torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64)
        if initial_state is None
        else initial_state.double()
    )
    outputs = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], u)
        outputs.append(torch.einsum("bhkv,bhk->bhv", S, scale * q[:, t]))
    return torch.stack(outputs, dim=1), S


def run_steps(q, k, v, g, beta, initial_state=None, **options):
    """The sequence as a loop of gated_delta_rule_step calls: (o [B,T,H,V], final_state)."""
    state = initial_state
    outputs = []
    for t in range(q.shape[1]):
        o_t, state = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state, **options)
        outputs.append(o_t)
    return torch.stack(outputs, dim=1), state


def outputs_and_grads(fn, inputs, **options):
    """(o, final_state, {name: grad}) for a fixed random loss on o and the final state."""
    leaves = {name: x.detach().clone().requires_grad_() for name, x in inputs.items()}
    o, state = fn(**leaves, **options)
    gen = torch.Generator().manual_seed(1234)
    loss = (o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum()
    loss = loss + (state.double() * torch.randn(state.shape, generator=gen, dtype=torch.float64)).sum()
    loss.backward()
    return o.detach(), state.detach(), {name: x.grad for name, x in leaves.items()}


def chunked(chunk_size):
    return lambda **kw: chunk_gated_delta_rule(**kw, output_final_state=True, chunk_size=chunk_size)


def recurrent(**kw):
    return recurrent_gated_delta_rule(**kw, output_final_state=True)


def assert_all_close(actual, expected, tol, what):
    o_a, s_a, grads_a = actual
    o_e, s_e, grads_e = expected
    assert rel_err(o_a, o_e) < tol, f"{what}: output"
    assert rel_err(s_a, s_e) < tol, f"{what}: final state"
    for name in grads_e:
        assert grads_a[name] is not None, f"{what}: no gradient for {name}"
        assert rel_err(grads_a[name], grads_e[name]) < tol, f"{what}: gradient of {name}"


# ----------------------------------------------------------------------------- equivalence


# K, V >= 2 and T >= 4: with a single key channel or a handful of tokens a gradient tensor can
# be one cancelling sum (e.g. dg_t = sum over K x V), whose float32 error is relative to its
# terms, not to its tiny value; "relative to the max-abs of the reference" needs a few entries.
@FAST
@given(
    B=st.integers(1, 2),
    T=st.integers(4, 40),
    H=st.integers(1, 3),
    K=st.integers(2, 12),
    V=st.integers(2, 12),
    chunk_size=st.integers(1, 20),
    l2norm=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunked_recurrent_step_and_float64_agree(B, T, H, K, V, chunk_size, l2norm, seed):
    inputs = make_inputs(B, T, H, K, V, seed=seed, l2norm_in_kernel=l2norm)
    reference = outputs_and_grads(recurrent, inputs, use_qk_l2norm_in_kernel=l2norm)
    assert_all_close(
        outputs_and_grads(chunked(chunk_size), inputs, use_qk_l2norm_in_kernel=l2norm),
        reference,
        TOL,
        "chunked vs recurrent",
    )
    assert_all_close(
        outputs_and_grads(run_steps, inputs, use_qk_l2norm_in_kernel=l2norm),
        reference,
        TOL,
        "steps vs recurrent",
    )
    exact = outputs_and_grads(lambda **kw: naive_float64(**kw, l2norm=l2norm), inputs)
    # Against float64 the float32 gradient of the L2 norm itself (a projection that cancels
    # for short vectors) costs about one more digit; the kernels' own agreement is checked at TOL.
    assert_all_close(reference, exact, 1e-4 if l2norm else TOL, "recurrent vs float64 rule")


@pytest.mark.parametrize("T", [63, 64, 65, 130])
def test_default_chunk_size_at_jetblock_head_dims(T):
    """Default chunk (64), T around and across chunk boundaries, K=96, V=256 (Jet-Nemotron-2B)."""
    inputs = make_inputs(1, T, 2, 96, 256, seed=T)
    expected = outputs_and_grads(recurrent, inputs)
    assert_all_close(outputs_and_grads(chunked(64), inputs), expected, TOL, f"T={T}")


def test_strong_and_zero_decay_stay_finite_and_agree():
    """Log decays from 0 (no forgetting) to -60 per token: cumulative decays underflow to 0
    inside a chunk and must not turn into inf/NaN (values or gradients)."""
    inputs = make_inputs(2, 50, 2, 8, 8, seed=3)
    gen = torch.Generator().manual_seed(4)
    inputs["g"] = -60.0 * torch.rand(2, 50, 2, generator=gen) ** 3
    inputs["g"][:, ::7] = 0.0
    expected = outputs_and_grads(recurrent, inputs)
    actual = outputs_and_grads(chunked(16), inputs)
    for tensor in (*actual[:2], *actual[2].values()):
        assert torch.isfinite(tensor).all()
    assert_all_close(actual, expected, TOL, "strong decay")


@pytest.mark.parametrize("chunk_size", [128, 256])
def test_long_chunks_with_strong_decay_keep_float32_accuracy(chunk_size):
    """Cumulative log decays reach -500 inside a 256-token chunk; exp(gamma_i - gamma_j) for
    nearby tokens must not lose digits to the difference of two large sums."""
    inputs = make_inputs(1, 512, 4, 32, 32, seed=chunk_size)
    gen = torch.Generator().manual_seed(22)
    inputs["g"] = -F.softplus(3.0 * torch.randn(1, 512, 4, generator=gen))
    expected = naive_float64(**inputs)
    actual = chunk_gated_delta_rule(**inputs, output_final_state=True, chunk_size=chunk_size)
    assert rel_err(actual[0], expected[0]) < TOL
    assert rel_err(actual[1], expected[1]) < TOL


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 64, 200])
def test_chunk_size_does_not_change_result(chunk_size):
    inputs = make_inputs(2, 45, 2, 8, 12, seed=chunk_size)
    expected = chunk_gated_delta_rule(**inputs, output_final_state=True, chunk_size=5)
    actual = chunk_gated_delta_rule(**inputs, output_final_state=True, chunk_size=chunk_size)
    assert rel_err(actual[0], expected[0]) < TOL
    assert rel_err(actual[1], expected[1]) < TOL


def test_short_sequence_is_one_chunk_of_its_own_length(monkeypatch):
    """A sequence shorter than chunk_size (sleep's L = 16 chunks) is not padded up to it: the
    padded intra-chunk work made training the toy hybrid ~3x slower."""
    seen = []
    original = gdn_module._chunk_torch

    def spy(*args):
        seen.append(args[-1])
        return original(*args)

    monkeypatch.setattr(gdn_module, "_chunk_torch", spy)
    inputs = make_inputs(2, 16, 2, 8, 8, seed=3)
    chunk_gated_delta_rule(**inputs, chunk_size=64)
    chunk_gated_delta_rule(**make_inputs(2, 100, 2, 8, 8, seed=3), chunk_size=64)
    assert seen == [16, 64]


@pytest.mark.parametrize("block_state_elements", [1, 2 * 6 * 10, 3 * 6 * 10, 2 * 3 * 6 * 10])
def test_blocking_and_grouping_do_not_change_result(monkeypatch, block_state_elements):
    """The kernel runs (batch, head) blocks separately (here: single heads; heads {0, 1} and
    {2} of one batch element; one batch element; the whole batch) and builds its intra-chunk
    matrices a group of chunks at a time (one or all chunks per group): values and gradients
    must not move."""
    inputs = make_inputs(2, 70, 3, 6, 10, seed=5)
    monkeypatch.setattr(gdn_module, "_GROUP_TOKEN_HEADS", 10**9)
    monkeypatch.setattr(gdn_module, "_BLOCK_STATE_ELEMENTS", 10**9)
    reference = outputs_and_grads(chunked(8), inputs)
    monkeypatch.setattr(gdn_module, "_BLOCK_STATE_ELEMENTS", block_state_elements)
    for group in (1, 10**9):
        monkeypatch.setattr(gdn_module, "_GROUP_TOKEN_HEADS", group)
        assert_all_close(outputs_and_grads(chunked(8), inputs), reference, TOL, f"group {group}")
        with torch.no_grad():
            o, state = chunk_gated_delta_rule(**inputs, output_final_state=True, chunk_size=8)
        assert rel_err(o, reference[0]) < TOL and rel_err(state, reference[1]) < TOL


def test_inference_and_autograd_paths_agree():
    """Without autograd the chunked kernel writes chunk outputs into one buffer; with it, it
    concatenates them. Both give the same values (T not a multiple of the chunk)."""
    inputs = make_inputs(2, 37, 3, 5, 7, seed=21)
    with torch.no_grad():
        o_inference, s_inference = chunk_gated_delta_rule(**inputs, output_final_state=True, chunk_size=8)
    leaves = {name: x.clone().requires_grad_() for name, x in inputs.items()}
    o_autograd, s_autograd = chunk_gated_delta_rule(**leaves, output_final_state=True, chunk_size=8)
    assert o_autograd.requires_grad and not o_inference.requires_grad
    assert torch.equal(o_inference, o_autograd.detach()) and torch.equal(s_inference, s_autograd.detach())
    assert o_inference.is_contiguous() and o_inference.shape == (2, 37, 3, 7)


def test_without_initial_state_equals_zero_state():
    inputs = make_inputs(2, 20, 2, 4, 6, seed=6)
    zero = dict(inputs, initial_state=torch.zeros_like(inputs["initial_state"]))
    no_state = {name: x for name, x in inputs.items() if name != "initial_state"}
    for fn in (chunked(8), recurrent, run_steps):
        o_none, s_none = fn(**no_state)
        o_zero, s_zero = fn(**zero)
        assert torch.equal(o_none, o_zero) and torch.equal(s_none, s_zero)
    assert s_none.dtype == torch.float32


def test_output_final_state_false_returns_none_and_same_output():
    inputs = make_inputs(1, 12, 2, 4, 4, seed=7)
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        o, state = fn(**inputs)
        assert state is None
        assert torch.equal(o, fn(**inputs, output_final_state=True)[0])


def test_empty_sequence_returns_empty_output_and_initial_state():
    inputs = make_inputs(2, 0, 3, 4, 5, seed=8)
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        o, state = fn(**inputs, output_final_state=True)
        assert o.shape == (2, 0, 3, 5)
        assert torch.equal(state, inputs["initial_state"])


# ----------------------------------------------------------------------------- state carry


@FAST
@given(
    T=st.integers(2, 50),
    splits=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3),
    chunk_size=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_state_carry_across_any_split(T, splits, chunk_size, seed):
    """One call == the same sequence cut anywhere, final state passed as the next initial state
    (values and gradients, for the chunked and the recurrent kernel)."""
    inputs = make_inputs(2, T, 2, 5, 7, seed=seed)
    cuts = sorted({0, T, *(int(s * T) for s in splits)})

    def in_pieces(fn):
        def run(q, k, v, g, beta, initial_state):
            state, outputs = initial_state, []
            for start, end in zip(cuts[:-1], cuts[1:], strict=True):
                piece = (x[:, start:end] for x in (q, k, v, g, beta))
                o, state = fn(*piece, initial_state=state, output_final_state=True)
                outputs.append(o)
            return torch.cat(outputs, dim=1), state

        return run

    whole = outputs_and_grads(chunked(chunk_size), inputs)
    chunk_pieces = in_pieces(lambda *a, **kw: chunk_gated_delta_rule(*a, **kw, chunk_size=chunk_size))
    assert_all_close(outputs_and_grads(chunk_pieces, inputs), whole, TOL, f"chunked, cuts {cuts}")
    recurrent_pieces = in_pieces(recurrent_gated_delta_rule)
    assert_all_close(outputs_and_grads(recurrent_pieces, inputs), whole, TOL, f"recurrent, cuts {cuts}")


# ----------------------------------------------------------------------------- options


def test_l2norm_uses_fla_formula_not_f_normalize():
    """q / sqrt(sum q^2 + 1e-6): equal to normalising outside with that formula, and visibly
    different from F.normalize on small vectors (where the epsilon matters)."""
    inputs = make_inputs(1, 10, 2, 4, 3, seed=9, l2norm_in_kernel=True)
    inputs["q"] = inputs["q"] * 1e-3
    inputs["k"] = inputs["k"] * 1e-3

    def fla_norm(x):
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)

    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        inside, _ = fn(**inputs, use_qk_l2norm_in_kernel=True)
        outside, _ = fn(**dict(inputs, q=fla_norm(inputs["q"]), k=fla_norm(inputs["k"])))
        other_eps, _ = fn(
            **dict(inputs, q=F.normalize(inputs["q"], dim=-1), k=F.normalize(inputs["k"], dim=-1))
        )
        assert rel_err(inside, outside) < TOL
        assert rel_err(inside, other_eps) > 1e-2
    q, k = inputs["q"][:, 0], inputs["k"][:, 0]
    step_inside, _ = gated_delta_rule_step(
        q, k, *(inputs[n][:, 0] for n in ("v", "g", "beta")), use_qk_l2norm_in_kernel=True
    )
    step_outside, _ = gated_delta_rule_step(
        fla_norm(q), fla_norm(k), *(inputs[n][:, 0] for n in ("v", "g", "beta"))
    )
    assert rel_err(step_inside, step_outside) < TOL


def test_scale_defaults_to_inverse_sqrt_key_dim_and_is_linear():
    inputs = make_inputs(2, 15, 2, 9, 4, seed=10)
    for fn in (chunked(4), recurrent):
        default_o, default_s = fn(**inputs)
        explicit_o, _ = fn(**inputs, scale=9**-0.5)
        doubled_o, doubled_s = fn(**inputs, scale=2 * 9**-0.5)
        assert rel_err(explicit_o, default_o) < TOL
        assert rel_err(doubled_o, 2 * default_o) < TOL
        assert torch.equal(doubled_s, default_s)  # scale reads the state, never writes it
        assert rel_err(default_o, naive_float64(**inputs)[0]) < TOL


def test_bf16_inputs_run_in_float32_and_stay_close():
    inputs = make_inputs(2, 70, 2, 16, 24, seed=11)
    bf16 = {name: x.to(torch.bfloat16) for name, x in inputs.items()}
    exact_o, exact_s = recurrent_gated_delta_rule(**inputs, output_final_state=True)
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        o, state = fn(**bf16, output_final_state=True)
        assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
        assert rel_err(o.float(), exact_o) < 1e-2
        assert rel_err(state, exact_s) < 1e-2
    o, state = gated_delta_rule_step(
        *(bf16[n][:, 0] for n in ("q", "k", "v", "g", "beta")), bf16["initial_state"]
    )
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32


def test_output_dtype_follows_v():
    inputs = make_inputs(1, 9, 1, 4, 4, seed=12)
    mixed = dict(inputs, q=inputs["q"].half(), v=inputs["v"].double())
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        o, state = fn(**mixed, output_final_state=True)
        assert o.dtype == torch.float64 and state.dtype == torch.float32


def test_gradients_reach_every_input_through_long_chains():
    """A loss on the last token's output reaches the first token's k, v, beta, g and the
    initial state (through every chunk of the sequential part)."""
    inputs = make_inputs(1, 40, 1, 4, 4, seed=13)
    inputs["g"] = torch.full_like(inputs["g"], -0.01)  # slow decay keeps the first token visible
    leaves = {name: x.clone().requires_grad_() for name, x in inputs.items()}
    o, _ = chunk_gated_delta_rule(**leaves, chunk_size=8)
    o[:, -1].sum().backward()
    for name in ("k", "v", "g", "beta"):
        assert leaves[name].grad[:, 0].abs().sum() > 0, name
    assert leaves["initial_state"].grad.abs().sum() > 0


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_value_errors_naming_the_argument():
    inputs = make_inputs(2, 6, 3, 4, 5, seed=14)

    def call(**changes):
        chunk_gated_delta_rule(**dict(inputs, **changes))

    cases = [
        (dict(k=inputs["k"][..., :3]), r"k must have shape \[2, 6, 3, 4\]"),
        (dict(q=inputs["q"][0]), r"q must have shape \[B, T, H, K\]"),
        (dict(v=inputs["v"][:, :, :2]), r"v must have shape \[B, T, H, V\].*head count"),
        (dict(v=inputs["v"][:, :5]), r"v must have shape"),
        (dict(g=inputs["g"][..., None]), r"g must have shape \[2, 6, 3\]"),
        (dict(beta=inputs["beta"][:, :4]), r"beta must have shape \[2, 6, 3\]"),
        (
            dict(initial_state=inputs["initial_state"][:, :, :2]),
            r"initial_state must have shape \[2, 3, 4, 5\]",
        ),
        (dict(q=inputs["q"].long()), r"q must be a floating-point tensor"),
        (dict(beta=inputs["beta"] > 0.5), r"beta must be a floating-point tensor"),
        (dict(g=[0.0]), r"g must be a torch.Tensor"),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            call(**changes)
        with pytest.raises(ValueError, match=message):
            recurrent_gated_delta_rule(**dict(inputs, **changes))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunk_gated_delta_rule(**inputs, chunk_size=0)
    with pytest.raises(ValueError, match="scale must be a float"):
        chunk_gated_delta_rule(**inputs, scale="0.5")


def test_step_bad_inputs_raise_value_errors():
    inputs = {n: x[:, 0] for n, x in make_inputs(2, 1, 3, 4, 5, seed=15).items() if n != "initial_state"}
    state = torch.zeros(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"state must have shape \[2, 3, 4, 5\]"):
        gated_delta_rule_step(**inputs, state=state[..., :4])
    with pytest.raises(ValueError, match=r"q must have shape \[B, H, K\]"):
        gated_delta_rule_step(**dict(inputs, q=inputs["q"][None]), state=state)
    with pytest.raises(ValueError, match=r"v must have shape \[B, H, V\]"):
        gated_delta_rule_step(**dict(inputs, v=inputs["v"][:1]), state=state)
    with pytest.raises(ValueError, match=r"g must have shape \[2, 3\]"):
        gated_delta_rule_step(**dict(inputs, g=inputs["g"][:, :1]), state=state)
    with pytest.raises(ValueError, match="k must be a floating-point tensor"):
        gated_delta_rule_step(**dict(inputs, k=inputs["k"].int()), state=state)


# ----------------------------------------------------------------------------- CUDA


@requires_cuda
def test_cuda_torch_path_matches_cpu(monkeypatch):
    """With the CUDA libraries switched off, the torch kernels on CUDA equal the CPU result."""
    monkeypatch.setenv("SLEEP_RETROFIT_DISABLE_CUDA_KERNELS", "1")
    inputs = make_inputs(2, 100, 3, 32, 64, seed=16)
    cuda_inputs = {name: x.cuda() for name, x in inputs.items()}
    for fn in (chunked(64), recurrent):
        expected = outputs_and_grads(fn, inputs)
        actual = outputs_and_grads(fn, cuda_inputs)
        assert_all_close(
            (actual[0].cpu(), actual[1].cpu(), {n: g.cpu() for n, g in actual[2].items()}),
            expected,
            1e-4,
            "cuda",
        )


@requires_cuda
@pytest.mark.parametrize("l2norm", [False, True])
def test_cuda_fla_matches_torch(monkeypatch, l2norm):
    """fla's kernels (bf16, as fla requires for its chunk kernel) against our torch kernels on
    the same bf16 inputs: values, final states, and the chunk kernel's gradients."""
    clear_kernel_cache()
    inputs = make_inputs(2, 300, 4, 64, 128, seed=17, l2norm_in_kernel=l2norm, dtype=torch.bfloat16)
    inputs = {name: x.cuda() for name, x in inputs.items()}
    inputs["initial_state"] = inputs["initial_state"].float()
    if cuda_kernel("chunk_gated_delta_rule", inputs["q"]) is None:
        pytest.skip("needs a CUDA device with flash-linear-attention installed")

    fla_chunk = outputs_and_grads(chunked(64), inputs, use_qk_l2norm_in_kernel=l2norm)
    with torch.no_grad():
        fla_recurrent = recurrent_gated_delta_rule(
            **inputs, output_final_state=True, use_qk_l2norm_in_kernel=l2norm
        )
    monkeypatch.setenv("SLEEP_RETROFIT_DISABLE_CUDA_KERNELS", "1")
    torch_chunk = outputs_and_grads(chunked(64), inputs, use_qk_l2norm_in_kernel=l2norm)
    assert_all_close(fla_chunk, torch_chunk, 2e-2, "fla chunk vs torch")
    assert rel_err(fla_recurrent[0].float(), torch_chunk[0].float()) < 2e-2
    assert rel_err(fla_recurrent[1], torch_chunk[1]) < 2e-2

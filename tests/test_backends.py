"""Per-call choice between the torch kernels and the CUDA libraries (kernels/backends.py), and
the gated delta rule's glue to fla: CPU tensors never reach a library even when it imports, a
package whose import fails counts as absent, the environment switch turns libraries off, and
the arguments handed to fla follow its signature."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from sleep_retrofit.kernels import backends, chunk_gated_delta_rule, recurrent_gated_delta_rule
from sleep_retrofit.kernels import gated_delta_rule as gdn_module
from sleep_retrofit.kernels.backends import CUDA_KERNELS, clear_kernel_cache, cuda_kernel

DISABLE = "SLEEP_RETROFIT_DISABLE_CUDA_KERNELS"


class FakeCudaTensor:
    """Stands in for a CUDA tensor where cuda_kernel only asks `.is_cuda` (no GPU here)."""

    is_cuda = True


def _refuse(*args, **kwargs):
    raise AssertionError("a CUDA library function was called")


@pytest.fixture(autouse=True)
def fresh_import_cache(monkeypatch):
    """Every test starts and ends with an empty import cache, so fake packages never leak."""
    monkeypatch.delenv(DISABLE, raising=False)
    clear_kernel_cache()
    yield
    clear_kernel_cache()


@pytest.fixture
def fake_fla(monkeypatch):
    """An importable fake `fla` whose gated delta rule functions raise if ever called."""
    ops = types.ModuleType("fla.ops.gated_delta_rule")
    ops.chunk_gated_delta_rule = _refuse
    ops.fused_recurrent_gated_delta_rule = _refuse
    for name, module in [
        ("fla", types.ModuleType("fla")),
        ("fla.ops", types.ModuleType("fla.ops")),
        ("fla.ops.gated_delta_rule", ops),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    return ops


def gdn_inputs(seed=0, B=2, T=19, H=2, K=4, V=6):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        q=torch.randn(B, T, H, K, generator=gen),
        k=F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1),
        v=torch.randn(B, T, H, V, generator=gen),
        g=-F.softplus(torch.randn(B, T, H, generator=gen)),
        beta=torch.rand(B, T, H, generator=gen),
        initial_state=torch.randn(B, H, K, V, generator=gen),
    )


def naive_gdn(q, k, v, g, beta, initial_state):
    """The update rule in float64, token by token (unit-norm keys, default scale)."""
    S = initial_state.double()
    outputs = []
    for t in range(q.shape[1]):
        S = torch.exp(g[:, t].double())[..., None, None] * S
        u = beta[:, t, :, None].double() * (
            v[:, t].double() - torch.einsum("bhkv,bhk->bhv", S, k[:, t].double())
        )
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t].double(), u)
        outputs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t].double() * q.shape[-1] ** -0.5))
    return torch.stack(outputs, dim=1), S


# ----------------------------------------------------------------------------- cuda_kernel


def test_cpu_tensors_never_get_a_library_function_even_when_it_imports(fake_fla):
    cpu = torch.zeros(2)
    assert cuda_kernel("chunk_gated_delta_rule", cpu) is None
    assert cuda_kernel("fused_recurrent_gated_delta_rule", cpu, None) is None
    # ... while the same call with (fake) CUDA tensors does get the package's function,
    # so the None above comes from the device check, not from a failed import.
    assert cuda_kernel("chunk_gated_delta_rule", FakeCudaTensor()) is fake_fla.chunk_gated_delta_rule


def test_mixed_devices_and_no_tensors_take_the_torch_path(fake_fla):
    assert cuda_kernel("chunk_gated_delta_rule", FakeCudaTensor(), torch.zeros(1)) is None
    assert cuda_kernel("chunk_gated_delta_rule") is None
    assert cuda_kernel("chunk_gated_delta_rule", None, None) is None
    # None entries (an absent initial_state) do not count against the CUDA path
    assert cuda_kernel("chunk_gated_delta_rule", FakeCudaTensor(), None) is fake_fla.chunk_gated_delta_rule


def test_chunk_gated_delta_rule_on_cpu_runs_torch_with_fla_importable(fake_fla):
    inputs = gdn_inputs()
    expected_o, expected_state = naive_gdn(**inputs)
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        o, state = fn(**inputs, output_final_state=True)  # would raise inside _refuse if dispatched
        assert ((o.double() - expected_o).abs().max() / expected_o.abs().max()).item() < 1e-5
        assert ((state.double() - expected_state).abs().max() / expected_state.abs().max()).item() < 1e-5


def test_package_whose_import_raises_is_treated_as_absent(monkeypatch, tmp_path):
    """An installed but broken package (e.g. a missing compiled extension raising at import)
    must behave like a missing one."""
    package = tmp_path / "causal_conv1d"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('compiled extension not found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "causal_conv1d", raising=False)
    assert cuda_kernel("causal_conv1d_fn", FakeCudaTensor()) is None
    assert cuda_kernel("causal_conv1d_update", FakeCudaTensor()) is None


def test_missing_package_and_missing_attribute_are_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # `import flash_attn` raises ImportError
    assert cuda_kernel("flash_attn_func", FakeCudaTensor()) is None
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))  # imports, no function
    clear_kernel_cache()
    assert cuda_kernel("flash_attn_func", FakeCudaTensor()) is None


def test_environment_switch_disables_libraries(monkeypatch, fake_fla):
    cuda = FakeCudaTensor()
    monkeypatch.setenv(DISABLE, "1")
    assert cuda_kernel("chunk_gated_delta_rule", cuda) is None
    monkeypatch.setenv(DISABLE, "0")
    assert cuda_kernel("chunk_gated_delta_rule", cuda) is fake_fla.chunk_gated_delta_rule
    monkeypatch.setenv(DISABLE, "")
    assert cuda_kernel("chunk_gated_delta_rule", cuda) is fake_fla.chunk_gated_delta_rule


def test_unknown_kernel_name_raises_key_error():
    with pytest.raises(KeyError, match="unknown CUDA kernel 'chunk_delta_rule'"):
        cuda_kernel("chunk_delta_rule", torch.zeros(1))


def test_every_registered_kernel_is_absent_for_cpu_tensors():
    for name in CUDA_KERNELS:
        assert cuda_kernel(name, torch.zeros(1)) is None


def test_import_results_are_cached_until_cleared(monkeypatch, fake_fla):
    first = cuda_kernel("chunk_gated_delta_rule", FakeCudaTensor())
    monkeypatch.setattr(fake_fla, "chunk_gated_delta_rule", lambda *a, **kw: None)
    assert cuda_kernel("chunk_gated_delta_rule", FakeCudaTensor()) is first
    clear_kernel_cache()
    assert cuda_kernel("chunk_gated_delta_rule", FakeCudaTensor()) is fake_fla.chunk_gated_delta_rule
    assert backends._import_kernel.cache_info().currsize == 1


# ----------------------------------------------------------------------------- gated delta rule -> fla glue


class RecordingFla:
    """Pretends to be fla's function: records its call, returns (o, final_state) like fla."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, g, beta, **kwargs):
        self.calls.append(dict(q=q, k=k, v=v, g=g, beta=beta, **kwargs))
        B, T, H, K = q.shape
        o = torch.full((B, T, H, v.shape[-1]), 7.0, dtype=q.dtype)
        state = torch.ones(B, H, K, v.shape[-1], dtype=torch.float32)
        return o, (state if kwargs["output_final_state"] else None)


@pytest.fixture
def recording(monkeypatch):
    """Make the gated delta rule believe its inputs are on CUDA with fla importable."""
    fake = RecordingFla()
    seen = []

    def fake_cuda_kernel(name, *tensors):
        seen.append(name)
        return fake

    monkeypatch.setattr(gdn_module, "cuda_kernel", fake_cuda_kernel)
    fake.names = seen
    return fake


def test_chunk_hands_bf16_calls_to_fla_with_its_signature(recording):
    inputs = {n: x.to(torch.bfloat16) for n, x in gdn_inputs().items()}
    o, state = chunk_gated_delta_rule(**inputs, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert recording.names == ["chunk_gated_delta_rule"]
    (call,) = recording.calls
    assert call["scale"] == pytest.approx(4**-0.5)
    assert call["output_final_state"] is True and call["use_qk_l2norm_in_kernel"] is True
    assert call["initial_state"].dtype == torch.float32
    assert torch.equal(call["initial_state"], inputs["initial_state"].float())
    assert o.dtype == torch.bfloat16 and torch.all(o == 7.0)
    assert state.dtype == torch.float32


def test_chunk_keeps_float32_on_torch(recording):
    """fla's chunk kernel rejects float32 inputs, so float32 stays on the torch path."""
    inputs = gdn_inputs()
    o, _ = chunk_gated_delta_rule(**inputs)
    assert recording.calls == []
    assert ((o.double() - naive_gdn(**inputs)[0]).abs().max()).item() < 1e-4


def test_recurrent_uses_fla_only_without_autograd(recording):
    """fla's fused recurrent kernel has no backward in several releases: differentiable calls
    stay on torch, inference calls go to fla."""
    inputs = gdn_inputs()
    with torch.no_grad():
        o, state = recurrent_gated_delta_rule(**inputs, scale=0.3)
    assert recording.names == ["fused_recurrent_gated_delta_rule"]
    assert recording.calls[0]["scale"] == 0.3 and state is None and torch.all(o == 7.0)

    leaf = inputs["v"].clone().requires_grad_()
    o, _ = recurrent_gated_delta_rule(**dict(inputs, v=leaf))
    assert len(recording.calls) == 1  # torch path this time
    o.sum().backward()
    assert leaf.grad is not None

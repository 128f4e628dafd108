"""Native Ouro against the upstream remote code's outputs (tests/fixtures/ouro_tiny, README §4.1-4.2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import requires_cuda
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

import sleep_retrofit  # noqa: F401  (registers the Auto classes)
from sleep_retrofit.models.ouro import (
    OuroCache,
    OuroConfig,
    OuroForCausalLM,
    exit_distribution,
    threshold_exit_steps,
)

ATOL = RTOL = 1e-4  # fixtures README §5: upstream's own noise is <= 2.4e-6


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module")
def ouro_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "ouro_tiny"


@pytest.fixture(scope="module")
def reference(ouro_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(ouro_dir / "reference.safetensors")


@pytest.fixture(scope="module")
def model(ouro_dir: Path) -> OuroForCausalLM:
    # The fixtures were made with upstream's eager attention.
    return OuroForCausalLM.from_pretrained(ouro_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def full_output(model, reference):
    with torch.no_grad():
        return model(reference["input_ids"], return_ut_logits=True, output_hidden_states=True)


# ------------------------------------------------------------------------------------- numerics


def test_default_logits_match_upstream(full_output, reference):
    assert_close(full_output.logits, reference["logits"], "logits")
    # Default threshold 1.0 selects the last step for every token (upstream's threshold branch).
    assert torch.equal(full_output.exit_steps, torch.full_like(full_output.exit_steps, 3))


def test_per_step_outputs_match_upstream(full_output, reference):
    assert_close(torch.stack(full_output.ut_hidden_states), reference["ut_hidden_states"], "ut_hidden_states")
    assert_close(full_output.ut_gate_logits, reference["ut_gate_logits"], "ut_gate_logits")
    assert_close(full_output.exit_pdf, reference["exit_pdf"], "exit_pdf")
    assert_close(full_output.ut_logits, reference["ut_logits"], "ut_logits")
    torch.testing.assert_close(full_output.exit_pdf.sum(-1), torch.ones(2, 17), atol=1e-6, rtol=0)


def test_layer_outputs_via_hooks_match_upstream(model, reference, full_output):
    captured = []
    hooks = [
        layer.register_forward_hook(lambda m, a, out: captured.append(out)) for layer in model.model.layers
    ]
    try:
        with torch.no_grad():
            model(reference["input_ids"], use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    # Layers run step by step, so call order is index step * L + layer.
    assert_close(torch.stack(captured), reference["layer_outputs"], "layer_outputs (hooks)")
    # output_hidden_states: embeddings, then the same layer outputs.
    assert len(full_output.hidden_states) == 1 + 8
    assert_close(torch.stack(full_output.hidden_states[1:]), reference["layer_outputs"], "hidden_states")


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_exit_at_step_matches_upstream(model, reference, step):
    with torch.no_grad():
        out = model(reference["input_ids"], exit_at_step=step)
    assert_close(out.logits, reference["ut_logits"][step], f"ut_logits[{step}]")
    assert (out.exit_steps == step).all()


def test_weighted_exit_matches_upstream(model, reference):
    with torch.no_grad():
        out = model(reference["input_ids"], use_weighted_exit=True)
    assert_close(out.logits, reference["weighted_exit_logits"], "weighted_exit_logits")
    assert out.exit_steps is None


def test_threshold_exit_matches_upstream(model, reference):
    with torch.no_grad():
        out = model(reference["input_ids"], exit_threshold=0.8)
    assert torch.equal(out.exit_steps, reference["threshold_exit_steps"])
    assert_close(out.logits, reference["threshold_logits"], "threshold_logits")
    # Not a trivial selection: the fixture's tokens exit at three different steps.
    assert len(out.exit_steps.unique()) == 3


def test_loss_with_labels_matches_upstream(model, reference):
    ids = reference["input_ids"]
    out = model(ids, labels=ids)
    assert_close(out.loss.detach().reshape(1), reference["loss_labels_eq_input_ids"], "loss")
    # With labels the logits are the expected logits, whatever exit options are set.
    assert_close(out.logits.detach(), reference["weighted_exit_logits"], "logits with labels")
    out.loss.backward()
    assert model.model.early_exit_gate.weight.grad is not None
    assert model.model.early_exit_gate.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_cached_decoding_matches_upstream(model, reference):
    ids = reference["input_ids"]
    with torch.no_grad():
        out = model(ids[:, :12], use_cache=True)
        cache = out.cache
        assert isinstance(cache, OuroCache) and len(cache.layers) == 4 * 2
        pieces = [out.logits]
        for t in range(12, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            pieces.append(out.logits)
    cached = torch.cat(pieces, dim=1)
    assert_close(cached, reference["cached_logits"], "cached_logits")
    assert_close(cached, reference["logits"], "cached vs full logits")
    assert cache.get_seq_length() == ids.shape[1]


def test_sdpa_matches_eager(ouro_dir, reference):
    sdpa = OuroForCausalLM.from_pretrained(ouro_dir, attn_implementation="sdpa").eval()
    with torch.no_grad():
        assert_close(sdpa(reference["input_ids"]).logits, reference["logits"], "sdpa logits")


def test_plain_dynamic_cache_gets_all_step_slots(model, reference):
    """generate() hands the model DynamicCache(config) with one slot per layer; the model adds the rest."""
    ids = reference["input_ids"]
    cache = DynamicCache(config=model.config)
    assert len(cache.layers) == 2
    with torch.no_grad():
        first = model(ids[:, :12], cache=cache, use_cache=True)
        nxt = model(ids[:, 12:13], cache=cache, use_cache=True)
    assert len(cache.layers) == 8
    assert_close(torch.cat([first.logits, nxt.logits], 1), reference["logits"][:, :13], "dynamic cache")

    too_small = DynamicCache(config=model.config)
    too_small.update(torch.zeros(2, 4, 3, 16), torch.zeros(2, 4, 3, 16), 0)
    with pytest.raises(ValueError, match="total_ut_steps \\* num_hidden_layers = 8"):
        model(ids[:, :1], cache=too_small, use_cache=True)


# ------------------------------------------------------------------------------------- exit helpers


def test_exit_helpers_edge_cases():
    gates = torch.tensor([[[40.0]], [[0.0]], [[0.0]]])  # [S=3, B=1, T=1]: step 0 takes ~all mass
    pdf = exit_distribution(gates)
    assert pdf.shape == (1, 1, 3)
    assert threshold_exit_steps(pdf, 0.5).item() == 0
    assert threshold_exit_steps(pdf, 2.0).item() == 2  # never reached -> last step
    one_step = exit_distribution(torch.tensor([[[-3.0]]]))
    assert one_step.item() == 1.0  # a single step takes all the mass


def test_exit_argument_errors(model, reference):
    with pytest.raises(ValueError, match="exit_at_step must be a step index in \\[0, 3\\]"):
        model(reference["input_ids"], exit_at_step=4)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


def test_config_defaults_and_early_exit_step_fallback(ouro_dir):
    config = AutoConfig.from_pretrained(ouro_dir)
    assert isinstance(config, OuroConfig)
    assert config.total_ut_steps == 4 and config.early_exit_threshold == 1.0
    assert config.early_exit_step is None  # absent from the released config.json
    assert config.rope_parameters["rope_theta"] == 10000.0
    assert OuroConfig().pad_token_id == 0
    with pytest.raises(ValueError, match="total_ut_steps must be >= 1"):
        OuroConfig(total_ut_steps=0)


# ------------------------------------------------------------------------------------- checkpoints


def test_fresh_state_dict_keys_and_shapes_equal_checkpoint(ouro_dir):
    config = AutoConfig.from_pretrained(ouro_dir)
    fresh = OuroForCausalLM(config)
    with safe_open(ouro_dir / "model.safetensors", "pt") as f:
        checkpoint = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    assert len(checkpoint) == 27
    assert {k: list(v.shape) for k, v in fresh.state_dict().items()} == checkpoint


def test_save_load_roundtrip_is_exact(model, reference, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(loaded) is OuroForCausalLM
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(loaded(reference["input_ids"]).logits, model(reference["input_ids"]).logits)


def test_auto_model_loads_fixture_without_remote_code(ouro_dir, reference):
    loaded = AutoModelForCausalLM.from_pretrained(ouro_dir, attn_implementation="eager")
    assert type(loaded) is OuroForCausalLM
    with torch.no_grad():
        assert_close(loaded(reference["input_ids"]).logits, reference["logits"], "auto logits")


def test_upstream_layout_with_auto_map_and_shards_loads(ouro_dir, reference, tmp_path):
    """A directory laid out like the Hub checkpoints: auto_map to remote files that are absent, two
    safetensors shards and model.safetensors.index.json."""
    config = json.loads((ouro_dir / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_ouro.OuroConfig",
        "AutoModel": "modeling_ouro.OuroModel",
        "AutoModelForCausalLM": "modeling_ouro.OuroForCausalLM",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = load_file(ouro_dir / "model.safetensors")
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: tensors[k] for k in shard_keys}, tmp_path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard_keys, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert not (tmp_path / "modeling_ouro.py").exists()

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert type(loaded) is OuroForCausalLM
    with torch.no_grad():
        assert_close(loaded(reference["input_ids"]).logits, reference["logits"], "sharded logits")


# ------------------------------------------------------------------------------------- generation


def test_batched_left_padded_generate_equals_unbatched(model, reference):
    prompts = [reference["input_ids"][0, :9], reference["input_ids"][1, :5]]
    pad = model.config.pad_token_id
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=pad, eos_token_id=None)
    with torch.no_grad():
        singles = [
            model.generate(p[None], attention_mask=torch.ones(1, len(p)), **kwargs)[0] for p in prompts
        ]
        width = max(len(p) for p in prompts)
        batch = torch.full((2, width), pad, dtype=torch.long)
        mask = torch.zeros(2, width, dtype=torch.long)
        for row, p in enumerate(prompts):
            batch[row, width - len(p) :] = p
            mask[row, width - len(p) :] = 1
        batched = model.generate(batch, attention_mask=mask, **kwargs)
    for row, single in enumerate(singles):
        assert torch.equal(batched[row, width:], single[len(prompts[row]) :]), f"row {row}"
    # Greedy decoding with the cache equals greedy decoding by full forwards.
    seq = prompts[0][None]
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(seq[0], singles[0])


# ------------------------------------------------------------------------------------- sliding window, GQA


def tiny_sliding_config(**overrides) -> OuroConfig:
    fields = dict(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        total_ut_steps=2,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
        max_position_embeddings=64,
        rope_theta=10000.0,
    )
    fields.update(overrides)
    return OuroConfig(**fields)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_sliding_window_gqa_cached_decode_equals_full_forward(attn_implementation):
    torch.manual_seed(0)
    config = tiny_sliding_config()
    config._attn_implementation = attn_implementation
    assert config.layer_types == ["full_attention", "sliding_attention"]
    model = OuroForCausalLM(config).eval()
    ids = torch.randint(1, 32, (2, 11))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :3], use_cache=True)
        pieces = [out.logits]
        for t in range(3, 11):
            out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    # The sliding layer's slots keep only the window (step 0 and step 1 of layer 1: slots 1 and 3).
    assert out.cache.layers[1].keys.shape[2] < 11 and out.cache.layers[0].keys.shape[2] == 11


def test_sliding_window_limits_what_a_token_sees():
    """One sliding layer, one step: position t depends on tokens t-3..t only (window 4)."""
    torch.manual_seed(1)
    config = tiny_sliding_config(num_hidden_layers=1, max_window_layers=0, total_ut_steps=1)
    model = OuroForCausalLM(config).eval()
    ids = torch.randint(1, 32, (1, 9))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] % 31) + 1
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    diff = (a - b).abs().amax(-1)[0]
    assert (diff[:4] > 1e-4).all()  # token 0 is inside the window of positions 0..3
    assert (diff[4:] == 0).all()  # and outside it from position 4 on


def test_generate_forwards_exit_options(model, reference):
    """generate(exit_at_step=0) decodes from step 0, like greedy full forwards with that exit."""
    prompt = reference["input_ids"][:1, :6]
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0, exit_at_step=0)
        default = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
        seq = prompt
        for _ in range(5):
            step0 = model(seq, use_cache=False, exit_at_step=0).logits[:, -1:].argmax(-1)
            seq = torch.cat([seq, step0], dim=1)
    assert torch.equal(generated, seq)
    assert not torch.equal(generated, default)  # the exit choice really changes the text here


@requires_cuda
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_cuda_matches_upstream(ouro_dir, reference, attn_implementation):
    cuda_model = OuroForCausalLM.from_pretrained(ouro_dir, attn_implementation=attn_implementation)
    cuda_model = cuda_model.to("cuda").eval()
    ids = reference["input_ids"].to("cuda")
    with torch.no_grad():
        full = cuda_model(ids).logits.cpu()
        out = cuda_model(ids[:, :12], use_cache=True)
        pieces = [out.logits]
        for t in range(12, ids.shape[1]):
            out = cuda_model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            pieces.append(out.logits)
    assert_close(full, reference["logits"], "cuda logits")
    assert_close(torch.cat(pieces, 1).cpu(), reference["cached_logits"], "cuda cached_logits")

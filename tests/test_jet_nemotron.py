"""Native Jet-Nemotron: loads the upstream fixture without remote code and reproduces its outputs;
cached decoding, padding, batching and generate() are exact; config validation; save/load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

import sleep_retrofit  # noqa: F401  (registers the native families with the Auto classes)
from sleep_retrofit.layers.jet_block import JetBlock
from sleep_retrofit.models.jet_nemotron import (
    JetNemotronCache,
    JetNemotronConfig,
    JetNemotronForCausalLM,
)
from sleep_retrofit.models.loading import CheckpointMismatchError

# fixtures README section 5: upstream's own noise is <= 6.4e-5 on values up to 31.
ATOL, RTOL = 5e-4, 1e-4
PREFILL = 12


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def fixture_dir(fixtures_dir):
    return fixtures_dir / "jet_nemotron_tiny"


@pytest.fixture(scope="module")
def ref(fixture_dir):
    return load_file(str(fixture_dir / "reference.safetensors"))


@pytest.fixture(scope="module")
def model(fixture_dir) -> JetNemotronForCausalLM:
    # Through AutoModelForCausalLM and without trust_remote_code: the local classes are registered.
    loaded = AutoModelForCausalLM.from_pretrained(fixture_dir)
    assert isinstance(loaded, JetNemotronForCausalLM)
    return loaded.eval()


def left_pad(rows: list[torch.Tensor], length: int, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row) :] = row
        mask[b, length - len(row) :] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------- fixture


def test_loads_without_remote_code_and_ties_embeddings(model, fixture_dir) -> None:
    config = AutoConfig.from_pretrained(fixture_dir)
    assert isinstance(config, JetNemotronConfig)
    assert config.layer_types == ["jet", "attn", "jet", "swa"]
    assert config.swa_window_size() == 8
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert isinstance(model.model.layers[0].self_attn, JetBlock)
    assert model.model.layers[3].self_attn.sliding_window == 8


def test_full_forward_matches_upstream_logits_and_hidden_states(model, ref) -> None:
    ids = ref["input_ids"]
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    close(out.logits, ref["logits"])
    assert len(out.hidden_states) == 5
    close(torch.stack(out.hidden_states), ref["hidden_states"])
    with torch.no_grad():
        single = model(ids[1:], attention_mask=torch.ones(1, ids.shape[1]), use_cache=False)
    close(single.logits, ref["logits"][1:])


def test_cached_decode_matches_upstream_cached_logits(model, ref) -> None:
    ids = ref["input_ids"]
    with torch.no_grad():
        out = model(ids[:, :PREFILL], use_cache=True)
        cache = out.cache
        assert isinstance(cache, JetNemotronCache)
        logits = [out.logits]
        for t in range(PREFILL, ids.shape[1]):
            # As upstream's reference: a mask of ones; every other step no mask at all.
            mask = torch.ones(2, t + 1) if t % 2 == 0 else None
            out = model(ids[:, t : t + 1], attention_mask=mask, cache=cache, use_cache=True)
            logits.append(out.logits)
    logits = torch.cat(logits, dim=1)
    close(logits, ref["cached_logits"])
    close(logits, ref["logits"])
    assert cache.get_seq_length() == ids.shape[1]
    # The sliding-window layer keeps only window - 1 tokens; the full-attention layer keeps all.
    assert cache.layers[3].keys.shape[-2] == 7 and cache.layers[1].keys.shape[-2] == ids.shape[1]
    assert cache.get_jet_state(0).shapes() == ((2, 2, 16, 32), (2, 64, 3))


def test_batched_forward_without_mask_and_with_mask_of_ones(model, ref, fixture_dir) -> None:
    """Upstream is wrong on both batched paths (fixtures README 4.5); ours equals the per-sequence
    targets, and is not bug-compatible."""
    ids = ref["input_ids"]
    quirks = load_file(str(fixture_dir / "upstream_quirks.safetensors"))
    with torch.no_grad():
        no_mask = model(ids).logits
        ones = model(ids, attention_mask=torch.ones_like(ids)).logits
    close(no_mask, ref["logits"])
    close(ones, ref["logits"])
    assert (no_mask - quirks["logits_batched_no_attention_mask"]).abs().max() > 1.0
    assert (ones - quirks["logits_batched_with_attention_mask"]).abs().max() > 1.0


def test_left_padded_batch_matches_per_sequence_reference(model, ref) -> None:
    ids = ref["input_ids"]
    # Row 0 keeps all 20 tokens, row 1 only its last 13 (so its reference is a fresh 13-token run).
    padded, mask = left_pad([ids[0], ids[1, 7:]], length=26, pad_id=5)
    with torch.no_grad():
        out = model(padded, attention_mask=mask).logits
        short = model(ids[1:, 7:]).logits
    close(out[0, 6:], ref["logits"][0])
    close(out[1, 13:], short[0])
    assert torch.isfinite(out).all()
    # What sits under the padding does not matter.
    junk = padded.clone()
    junk[mask == 0] = 77
    with torch.no_grad():
        out_junk = model(junk, attention_mask=mask).logits
    assert torch.equal(out_junk[mask.bool()], out[mask.bool()])


def test_left_padded_cached_decode_matches_reference(model, ref) -> None:
    ids = ref["input_ids"]
    padded, mask = left_pad([ids[0, :PREFILL], ids[1, 4:PREFILL]], length=PREFILL)
    with torch.no_grad():
        out = model(padded, attention_mask=mask, use_cache=True)
        cache, steps = out.cache, [out.logits[:, -1:]]
        for t in range(PREFILL, ids.shape[1]):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            out = model(ids[:, t : t + 1], attention_mask=mask, cache=cache)
            steps.append(out.logits)
        row1 = model(ids[1:, 4:]).logits
    steps = torch.cat(steps, dim=1)  # predictions after positions 11..19
    close(steps[0], ref["logits"][0, PREFILL - 1 :])
    close(steps[1], row1[0, PREFILL - 1 - 4 :])


def test_batched_generate_with_left_padding_equals_unbatched(model, ref) -> None:
    ids = ref["input_ids"]
    prompts = [ids[0, :14], ids[1, :9]]
    padded, mask = left_pad(prompts, length=14)
    kwargs = dict(
        max_new_tokens=10, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True
    )
    batched = model.generate(padded, attention_mask=mask, **kwargs)
    for b, prompt in enumerate(prompts):
        single = model.generate(prompt[None], **kwargs)
        assert torch.equal(batched.sequences[b, 14:], single.sequences[0, len(prompt) :])
        close(torch.stack([s[b] for s in batched.logits]), torch.stack([s[0] for s in single.logits]))
    # Greedy continuation equals re-running the full forward on the growing sequence.
    with torch.no_grad():
        full = model(
            batched.sequences, attention_mask=torch.cat([mask, torch.ones(2, 10, dtype=torch.long)], 1)
        )
    close(torch.stack(batched.logits, dim=1), full.logits[:, 13:-1])


def test_beam_search_with_cache_equals_without(model, ref) -> None:
    """Beam search reorders the cache every step (jet states, KV and the sliding window): all beams
    and their scores equal beam search that recomputes everything without a cache."""
    ids = ref["input_ids"]
    padded, mask = left_pad([ids[0, :10], ids[1, :7]], length=10)
    kwargs = dict(
        max_new_tokens=6,
        num_beams=3,
        num_return_sequences=3,
        do_sample=False,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    with_cache = model.generate(padded, attention_mask=mask, **kwargs)
    without = model.generate(padded, attention_mask=mask, use_cache=False, **kwargs)
    assert torch.equal(with_cache.sequences, without.sequences)
    close(with_cache.sequences_scores, without.sequences_scores, atol=1e-4)


def test_loss_is_shifted_cross_entropy(model, ref) -> None:
    ids = ref["input_ids"]
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    expected = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, 128), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    close(out.loss, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        last = model(ids, logits_to_keep=1).logits
    close(last, ref["logits"][:, -1:])


# --------------------------------------------------------------------------------------------- checkpoints


def test_fresh_model_state_dict_matches_checkpoint(fixture_dir) -> None:
    config = JetNemotronConfig.from_pretrained(fixture_dir)
    fresh = JetNemotronForCausalLM(config)
    checkpoint = load_file(str(fixture_dir / "model.safetensors"))
    expected = {k: tuple(v.shape) for k, v in checkpoint.items()}
    ours = {k: tuple(v.shape) for k, v in fresh.state_dict().items() if k != "lm_head.weight"}
    assert ours == expected
    # transformers' init went through the JetBlock's upstream init.
    block = fresh.model.layers[2].self_attn
    assert torch.count_nonzero(block.dynamic_conv1d.kernel_generator.w2.weight) == 0
    assert block.dynamic_conv1d.kernel_generator.w2.bias.abs().sum() > 0
    assert bool((block.A_log.exp() < 16).all())


def test_save_and_reload_round_trip(model, ref, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "jet_nemotron" and saved["layer_types"] == ["jet", "attn", "jet", "swa"]
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    with torch.no_grad():
        assert torch.equal(reloaded(ref["input_ids"]).logits, model(ref["input_ids"]).logits)


def test_upstream_style_config_loads(fixture_dir, ref, tmp_path) -> None:
    """Released configs carry an auto_map to remote code, layer_types as a string and norm_eps as a
    string: none of that needs trust_remote_code here."""
    shutil.copy(fixture_dir / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((fixture_dir / "config.json").read_text())
    config["layer_types"] = str(config["layer_types"])
    config["efficient_attention_config"]["jet"]["norm_eps"] = "1e-5"
    config["auto_map"] = {
        "AutoConfig": "configuration_jet_nemotron.JetNemotronConfig",
        "AutoModelForCausalLM": "modeling_jet_nemotron.JetNemotronForCausalLM",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, JetNemotronForCausalLM)
    assert loaded.config.layer_types == ["jet", "attn", "jet", "swa"]
    with torch.no_grad():
        close(loaded(ref["input_ids"]).logits, ref["logits"])


def test_missing_tensor_is_an_error_naming_it(fixture_dir, tmp_path) -> None:
    shutil.copy(fixture_dir / "config.json", tmp_path / "config.json")
    weights = load_file(str(fixture_dir / "model.safetensors"))
    del weights["model.layers.2.self_attn.dynamic_conv1d.kernel_generator.w2.bias"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        CheckpointMismatchError, match=r"layers\.2\.self_attn\.dynamic_conv1d\.kernel_generator\.w2\.bias"
    ):
        JetNemotronForCausalLM.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------- config / cache


def test_default_config_is_jet_nemotron_2b() -> None:
    config = JetNemotronConfig()
    assert config.num_hidden_layers == 28 and len(config.layer_types) == 28
    assert [i for i, t in enumerate(config.layer_types) if t != "jet"] == [14, 19, 20, 21]
    assert config.swa_window_size() == 1152
    jet = config.jet_block_config()
    assert (jet["num_heads"], jet["head_dim"], float(jet["norm_eps"])) == (12, 96, 1e-5)
    assert config.tie_word_embeddings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(num_hidden_layers=3, layer_types=["jet", "attn"]),
            r"layer_types has 2 entries .* expected 3 entries",
        ),
        (
            dict(num_hidden_layers=2, layer_types=["jet", "mamba"]),
            r"layer_types\[1\] is 'mamba'; expected one of",
        ),
        (dict(num_hidden_layers=2, layer_types="['jet', 'attn'"), "layer_types must be a list"),
        (dict(num_hidden_layers=4), "layer_types is required when num_hidden_layers != 28"),
        (
            dict(num_hidden_layers=1, layer_types=["swa"], efficient_attention_config={"swa": {}}),
            r"efficient_attention_config\['swa'\]\['window_size'\] must be a positive int",
        ),
        (
            dict(
                num_hidden_layers=1,
                layer_types=["jet"],
                efficient_attention_config={"swa": {"window_size": 4}},
            ),
            r"efficient_attention_config\['jet'\] must be a dict",
        ),
        (
            dict(
                num_hidden_layers=1,
                layer_types=["jet"],
                efficient_attention_config={"jet": {"norm_eps": "tiny"}},
            ),
            r"efficient_attention_config\['jet'\]\['norm_eps'\] must be a number",
        ),
        (
            dict(num_hidden_layers=1, layer_types=["jet"], efficient_attention_config={"jet": {"heads": 2}}),
            r"unknown keys \['heads'\]",
        ),
        (
            dict(
                num_hidden_layers=1,
                layer_types=["jet"],
                efficient_attention_config={"jet": {"head_dim": 16, "expand_v": 1.03}},
            ),
            r"\['expand_v'\] times head_dim must be a positive integer",
        ),
    ],
)
def test_bad_config_raises_value_error(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        JetNemotronConfig(**kwargs)


def test_string_layer_types_and_all_jet_model() -> None:
    config = JetNemotronConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        layer_types="['jet', 'jet']",
        efficient_attention_config={"jet": {"num_heads": 2, "head_dim": 8, "norm_eps": "1e-5"}},
    )
    assert config.layer_types == ["jet", "jet"]
    torch.manual_seed(0)
    model = JetNemotronForCausalLM(config).eval()
    ids = torch.randint(1, 32, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :4], use_cache=True)
        steps = [out.logits]
        for t in range(4, 9):
            out = model(ids[:, t : t + 1], cache=out.cache)
            steps.append(out.logits)
    close(torch.cat(steps, dim=1), full, atol=1e-5)
    assert out.cache.get_seq_length() == 9  # no attention layer: the jet layers count tokens


def test_wrong_cache_and_mask_are_rejected(model, ref) -> None:
    ids = ref["input_ids"][:, :5]
    with pytest.raises(ValueError, match="cache must be a JetNemotronCache"):
        model(ids, cache=DynamicCache(), use_cache=True)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[B, past \+ T\] = \[2, 5\]"):
        model(ids, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="2D padding mask"):
        model(ids, attention_mask=torch.ones(2, 1, 5, 5))


@requires_cuda
def test_cuda_matches_fixture(fixture_dir, ref) -> None:
    """On CUDA (fla kernels when installed) the fixture logits and cached decoding still match."""
    cuda_model = AutoModelForCausalLM.from_pretrained(fixture_dir).cuda().eval()
    ids = ref["input_ids"].cuda()
    with torch.no_grad():
        close(cuda_model(ids).logits.cpu(), ref["logits"], atol=2e-3, rtol=1e-3)
        out = cuda_model(ids[:, :PREFILL], use_cache=True)
        steps = [out.logits]
        for t in range(PREFILL, ids.shape[1]):
            out = cuda_model(ids[:, t : t + 1], cache=out.cache)
            steps.append(out.logits)
    close(torch.cat(steps, dim=1).cpu(), ref["cached_logits"], atol=2e-3, rtol=1e-3)

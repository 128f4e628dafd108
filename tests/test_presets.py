"""Built-in presets: tiny random models of every family and the character tokenizer they share
build offline, run, are deterministic per seed, and fail clearly on an unknown name."""

from __future__ import annotations

import string

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import sleep_retrofit  # noqa: F401  (registers the native families)
from sleep_retrofit.models import resolve_family
from sleep_retrofit.presets import (
    PRESET_ALPHABET,
    PRESETS,
    is_preset,
    load_preset,
    preset_config,
    preset_tokenizer,
)
from sleep_retrofit.retrofit import build_fast_weight_blocks, default_plan

EXPECTED = {  # preset -> (model_type, family, model class name)
    "tiny-ouro": ("ouro", "ouro", "OuroForCausalLM"),
    "tiny-jet-nemotron": ("jet_nemotron", "jet_nemotron", "JetNemotronForCausalLM"),
    "tiny-llama": ("llama", "llama", "LlamaForCausalLM"),
    "tiny-qwen2": ("qwen2", "llama", "Qwen2ForCausalLM"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return preset_tokenizer()


# --------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_text(tokenizer) -> None:
    text = "hello world\n  The quick brown fox: 42 + 7 = 49 {ok} ~`|\\'\"\n"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character, nothing added
    assert tokenizer.decode(ids) == text
    everything = "".join(PRESET_ALPHABET)
    assert tokenizer.decode(tokenizer(everything)["input_ids"]) == everything
    assert set(PRESET_ALPHABET) == set(string.printable[:95]) | {"\n"}


def test_tokenizer_vocabulary_and_special_tokens(tokenizer) -> None:
    assert len(tokenizer) == 100
    specials = [
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    ]
    assert specials == [0, 1, 2, 3]
    assert tokenizer("a")["input_ids"] == [tokenizer.convert_tokens_to_ids("a")]
    # Characters outside the alphabet become <unk>; specials decode or are skipped on request.
    assert tokenizer("é\tb")["input_ids"][:2] == [1, 1]
    ids = [tokenizer.bos_token_id, *tokenizer("hi")["input_ids"], tokenizer.eos_token_id]
    assert tokenizer.decode(ids) == "<bos>hi<eos>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi"
    batch = tokenizer(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [0, 0] and batch["attention_mask"][0] == [0, 0, 1, 1]  # left padding


def test_tokenizer_saves_and_loads_with_auto_tokenizer(tokenizer, tmp_path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "sleep on it\n~"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (0, 3, "left")


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_config(name: str, tokenizer) -> None:
    config = preset_config(name)
    model_type, family, _ = EXPECTED[name]
    assert config.model_type == model_type
    assert resolve_family(config).name == family
    assert config.hidden_size == 64
    assert 4 <= config.num_hidden_layers <= 8
    assert config.vocab_size == len(tokenizer)
    assert config.max_position_embeddings >= 4096
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    # A config that round-trips through AutoConfig, as a converted checkpoint's nested config must.
    restored = AutoConfig.for_model(**config.to_dict())
    assert restored.to_diff_dict() == config.to_diff_dict()
    assert preset_config(name) is not config  # a fresh config every call


def test_presets_cover_the_families() -> None:
    assert set(PRESETS) == set(EXPECTED)
    assert all(isinstance(description, str) and description for description in PRESETS.values())
    assert is_preset("tiny-ouro") and not is_preset("./tiny-ouro") and not is_preset(None)
    jet = preset_config("tiny-jet-nemotron")
    assert {"jet", "attn", "swa"} <= set(jet.layer_types)  # the loop body has every layer kind


def test_default_plans_of_the_presets() -> None:
    plans = {name: default_plan(preset_config(name)) for name in PRESETS}
    assert (plans["tiny-ouro"].kind, plans["tiny-ouro"].insert_after) == ("jet", [0, 1, 2, 3])
    assert plans["tiny-jet-nemotron"].insert_after == []
    assert (plans["tiny-llama"].kind, plans["tiny-llama"].insert_after) == ("gdn", [3, 7])
    assert plans["tiny-qwen2"].insert_after == [3, 7]
    for name, plan in plans.items():
        blocks = build_fast_weight_blocks(preset_config(name), plan)
        x = torch.randn(1, 3, 64)
        for block in blocks.values():
            assert torch.equal(block(x)[0], x)


def test_unknown_preset_lists_the_choices() -> None:
    message = (
        r"unknown preset 'tiny-gpt2'; valid presets: tiny-ouro, tiny-jet-nemotron, tiny-llama, tiny-qwen2"
    )
    with pytest.raises(ValueError, match=message):
        preset_config("tiny-gpt2")
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("tiny-gpt2")
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        load_preset("tiny-llama", dtype=torch.int8)
    with pytest.raises(ValueError, match="seed must be an int"):
        load_preset("tiny-llama", seed="0")


# --------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", list(PRESETS))
def test_load_preset_runs_and_is_deterministic_per_seed(name: str) -> None:
    rng_before = torch.random.get_rng_state()
    model, tokenizer = load_preset(name, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert type(model).__name__ == EXPECTED[name][2]
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())

    batch = tokenizer(["hello world", "hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()

    same, _ = load_preset(name, seed=0)
    other, _ = load_preset(name, seed=1)
    weights, same_weights, other_weights = model.state_dict(), same.state_dict(), other.state_dict()
    assert weights.keys() == same_weights.keys()
    assert all(torch.equal(weights[key], same_weights[key]) for key in weights)
    assert any(not torch.equal(weights[key], other_weights[key]) for key in weights)
    with torch.no_grad():
        assert torch.equal(same(**batch).logits, logits)


def test_load_preset_dtype_and_generation(tmp_path) -> None:
    model, tokenizer = load_preset("tiny-ouro", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.config.dtype == torch.bfloat16

    model, tokenizer = load_preset("tiny-llama", seed=3)
    prompt = tokenizer("once upon", return_tensors="pt")
    first = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert first.shape == (1, prompt["input_ids"].shape[1] + 6)
    assert tokenizer.decode(first[0]).startswith("once upon")
    # Saved and reloaded through the Auto classes, the preset gives the same greedy continuation.
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.generate(**prompt, max_new_tokens=6, do_sample=False), first)

"""SleepRetrofitForCausalLM: conversion is the identity, generation across evictions equals the
teacher-forced training forward, checkpoints round-trip through AutoModelForCausalLM (after
``import sleep_retrofit`` and through the trust_remote_code shim), settings are overridable at load
time and per call and validated, the labels path computes the loss it claims, and batched / beam
generation agree with their unbatched, teacher-forced counterparts (design.md, "Invariants" 3, 8).
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch
from conftest import requires_cuda
from helpers import load_fixture_model, random_ids, randomise_fast_weights, tiny_llama_config
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    StoppingCriteria,
    StoppingCriteriaList,
)

import sleep_retrofit  # noqa: F401  (registers the native families and the converted model)
from sleep_retrofit.modeling import SHIM_MODULE, SleepRetrofitConfig, SleepRetrofitForCausalLM
from sleep_retrofit.sleep import SleepCache, SleepSettings

L = 8
FAMILIES = ("llama", "jet_nemotron", "ouro")
ATOL = 1e-4
REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(config_class=LlamaConfig, **overrides):
    values = dict(
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,  # greedy runs of a random model must not stop early
        pad_token_id=0,
    )
    return tiny_llama_config(config_class, **{**values, **overrides})


def load_base(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if family == "llama":
        return LlamaForCausalLM(tiny_config()).eval()
    if family == "qwen2":
        return Qwen2ForCausalLM(tiny_config(Qwen2Config)).eval()
    return load_fixture_model(family)


def convert(family: str, **settings) -> SleepRetrofitForCausalLM:
    settings = {"window": L, **settings}
    model = SleepRetrofitForCausalLM.from_base(load_base(family), settings=SleepSettings(**settings)).eval()
    randomise_fast_weights(model)
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, SleepRetrofitForCausalLM]:
    """Converted models (window L, N=1, hard), non-trivial fast weights; read-only for the tests."""
    return {family: convert(family) for family in FAMILIES}


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory) -> dict[str, Path]:
    directories = {}
    for family, model in models.items():
        directories[family] = tmp_path_factory.mktemp(family)
        model.save_pretrained(directories[family])
    return directories


# ------------------------------------------------------------ conversion is the identity


@pytest.mark.parametrize("family", ["llama", "qwen2", "jet_nemotron", "ouro"])
def test_converted_logits_equal_base_logits(family):
    base = load_base(family)
    ids = random_ids(2, 30, seed=1)
    with torch.no_grad():
        expected = base(ids).logits
        model = SleepRetrofitForCausalLM.from_base(base, settings=SleepSettings(window=64)).eval()
        assert len(model.fast_weights) == (0 if family == "jet_nemotron" else 2)  # the default plans
        for passes, eviction in ((1, "hard"), (1, "sliding"), (3, "hard")):
            logits = model(ids, passes=passes, eviction=eviction).logits
            torch.testing.assert_close(logits, expected, atol=ATOL, rtol=ATOL)
        # Converting must leave the base model usable on its own (it shares modules and config).
        torch.testing.assert_close(base(ids).logits, expected)


# ------------------------------------------------------------ generation == teacher forcing


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_generation_across_evictions_equals_teacher_forced_training_forward(models, family, eviction):
    """30 new tokens after a 13-token prompt with L=8: five evictions during generation, each
    consolidating generated tokens with N=3 passes from the chunk-start snapshot."""
    model = models[family]
    prompt = random_ids(1, 13, seed=2)
    with torch.no_grad():
        generated = model.generate(
            prompt,
            max_new_tokens=30,
            do_sample=False,
            passes=3,
            eviction=eviction,
            output_logits=True,
            return_dict_in_generate=True,
        )
        sequence = generated.sequences
        assert sequence.shape == (1, 43)
        step_logits = torch.stack(generated.logits, dim=1)  # [1, 30, vocab]
        labels = sequence.clone()
        labels[:, :13] = -100  # the training forward: prompt as context, generated tokens as targets
        forced = model(sequence, labels=labels, passes=3, eviction=eviction)
    assert forced.logits.shape == step_logits.shape
    assert torch.equal(forced.logits.argmax(-1), sequence[:, 13:])
    torch.testing.assert_close(forced.logits, step_logits, atol=ATOL, rtol=ATOL)


# ------------------------------------------------------------ save -> load


def test_saved_directory_layout(saved):
    directory = saved["llama"]
    assert (directory / "model.safetensors").is_file()
    assert (directory / f"{SHIM_MODULE}.py").is_file()
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "sleep_retrofit"
    assert config["auto_map"]["AutoModelForCausalLM"] == f"{SHIM_MODULE}.SleepRetrofitForCausalLM"
    assert config["base_config"]["model_type"] == "llama"
    assert (config["passes"], config["window"], config["eviction"]) == (1, L, "hard")
    assert config["fast_weights"]["insert_after"] == [3, 7]


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_config_shows_the_bases_sizes_at_the_top_level(models, saved, family):
    """Tools read config.max_position_embeddings etc. (lm-eval sets max_length from it)."""
    base = models[family].config.base_config
    loaded = AutoModelForCausalLM.from_pretrained(saved[family]).config
    for config in (models[family].config, loaded):
        for name in ("max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            assert getattr(config, name) == getattr(base, name), name


def test_conversion_keeps_the_bases_generation_config(tmp_path):
    from transformers import GenerationConfig

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_config()).eval()
    base.generation_config = GenerationConfig(
        eos_token_id=[2, 7], repetition_penalty=1.3, do_sample=True, top_p=0.9
    )
    model = SleepRetrofitForCausalLM.from_base(base, settings=SleepSettings(window=L))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).generation_config
    for generation in (model.generation_config, loaded):
        assert generation.eos_token_id == [2, 7]
        assert (generation.repetition_penalty, generation.do_sample, generation.top_p) == (1.3, True, 0.9)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_save_load_identical_logits(models, saved, family, trust_remote_code):
    ids = random_ids(2, 3 * L + 5, seed=3)
    loaded = AutoModelForCausalLM.from_pretrained(saved[family], trust_remote_code=trust_remote_code).eval()
    assert isinstance(loaded, SleepRetrofitForCausalLM)
    with torch.no_grad():
        for passes in (1, 3):
            assert torch.equal(loaded(ids, passes=passes).logits, models[family](ids, passes=passes).logits)


def test_trust_remote_code_loads_without_importing_the_package(models, saved, tmp_path):
    """A fresh interpreter that never imported sleep_retrofit: the shim in the checkpoint does."""
    ids = random_ids(2, 3 * L + 5, seed=4)
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        from transformers import AutoModelForCausalLM
        assert "sleep_retrofit" not in sys.modules
        torch.set_num_threads(1)  # as in this process: the same reductions, bitwise the same logits
        model = AutoModelForCausalLM.from_pretrained({str(saved["llama"])!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.load({str(tmp_path / "ids.pt")!r}), passes=3).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        print(type(model).__name__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SleepRetrofitForCausalLM" in result.stdout
    with torch.no_grad():
        expected = models["llama"](ids, passes=3).logits
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


# ------------------------------------------------------------ settings: load time, per call, validation


def test_load_time_overrides(models, saved):
    loaded = AutoModelForCausalLM.from_pretrained(saved["llama"], passes=4, window=5, eviction="sliding")
    assert (loaded.config.passes, loaded.config.window, loaded.config.eviction) == (4, 5, "sliding")
    assert loaded.engine().settings == SleepSettings(passes=4, window=5, eviction="sliding")
    ids = random_ids(2, 23, seed=5)
    with torch.no_grad():
        expected = models["llama"](ids, passes=4, window=5, eviction="sliding").logits
        assert torch.equal(loaded(ids).logits, expected)
        # and the overrides matter: the saved settings give other logits
        assert (models["llama"](ids).logits - expected).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama", "ouro"])
def test_per_call_overrides_in_forward_and_generate(models, saved, family):
    model = models[family]
    reference = AutoModelForCausalLM.from_pretrained(saved[family], passes=3, eviction="sliding").eval()
    ids = random_ids(1, 3 * L + 5, seed=6)
    with torch.no_grad():
        per_call = model(ids, passes=3, eviction="sliding").logits
        assert torch.equal(per_call, reference(ids).logits)
        assert (per_call - model(ids).logits).abs().max() > 1e-3
        prompt = ids[:, :13]
        generated = model.generate(prompt, max_new_tokens=20, do_sample=False, passes=3, eviction="sliding")
        assert torch.equal(generated, reference.generate(prompt, max_new_tokens=20, do_sample=False))
        # an override for one call leaves the config alone
        assert (model.config.passes, model.config.eviction) == (1, "hard")
        assert model.engine().settings == SleepSettings(window=L)


BAD_SETTINGS = [
    ({"passes": 0}, "passes"),
    ({"passes": 1.5}, "passes"),
    ({"window": 0}, "window"),
    ({"window": -3}, "window"),
    ({"eviction": "soft"}, "eviction"),
]


@pytest.mark.parametrize(("bad", "name"), BAD_SETTINGS)
def test_bad_settings_are_value_errors_naming_them(models, saved, bad, name):
    model = models["llama"]
    ids = random_ids(1, 5)
    with pytest.raises(ValueError, match=name):
        SleepSettings(**bad)
    with pytest.raises(ValueError, match=name):
        SleepRetrofitConfig(base_config=model.config.base_config, **bad)
    with pytest.raises(ValueError, match=name):
        AutoModelForCausalLM.from_pretrained(saved["llama"], **bad)
    with pytest.raises(ValueError, match=name):
        model(ids, **bad)
    with pytest.raises(ValueError, match=name):
        model.generate(ids, max_new_tokens=2, **bad)


def test_foreign_cache_is_a_value_error(models):
    with pytest.raises(ValueError, match="SleepCache"):
        models["llama"](random_ids(1, 5), cache=DynamicCache())


def test_unknown_keyword_is_a_type_error_not_silently_the_defaults(models):
    with pytest.raises(TypeError, match="pases"):
        models["llama"](random_ids(1, 5), pases=4)
    with pytest.raises(ValueError, match="pases"):  # generate validates against forward's signature
        models["llama"].generate(random_ids(1, 5), max_new_tokens=2, pases=4)


@pytest.mark.parametrize("name", ["output_attentions", "output_hidden_states"])
def test_per_layer_outputs_are_refused_by_name(models, name):
    with pytest.raises(ValueError, match=name):
        models["llama"](random_ids(1, 5), **{name: True})
    models["llama"](random_ids(1, 5), **{name: False})  # the value generate passes by default


def test_static_cache_implementation_is_refused(models):
    with pytest.raises(ValueError, match="cache_implementation='static'"):
        models["llama"].generate(random_ids(1, 5), max_new_tokens=2, cache_implementation="static")


def test_return_dict_false_returns_the_tuple(models):
    ids = random_ids(1, 2 * L + 3, seed=6)
    with torch.no_grad():
        as_dict = models["llama"](ids, labels=ids)
        as_tuple = models["llama"](ids, labels=ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def _fresh_engine_logits(model, ids):
    model.__dict__.pop("_engines", None)
    with torch.no_grad():
        return model(ids).logits


def test_the_memoised_engine_follows_a_swapped_decoder_layer():
    model = convert("llama")
    ids = random_ids(1, 2 * L + 3, seed=4)
    with torch.no_grad():
        before = model(ids).logits  # memoises the engine
        layer = copy.deepcopy(model.base.model.layers[2])
        for parameter in layer.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        model.base.model.layers[2] = layer
        after = model(ids).logits
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, _fresh_engine_logits(model, ids))


def test_the_memoised_engine_follows_ouros_total_ut_steps():
    model = convert("ouro")
    ids = random_ids(1, 2 * L + 3, seed=4)
    with torch.no_grad():
        before = model(ids).logits
        model.base.config.total_ut_steps += 1
        after = model(ids).logits
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, _fresh_engine_logits(model, ids))


# ------------------------------------------------------------ the labels path


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_loss_equals_manual_cross_entropy_over_targets(models, family):
    model = models[family]
    ids = random_ids(2, 3 * L + 5, seed=7)
    labels = ids.clone()
    labels[:, : 2 * L] = -100  # two context chunks
    labels[0, 2 * L + 3] = -100  # rows with different targets
    labels[1, -2:] = -100
    with torch.no_grad():
        out = model(ids, labels=labels, passes=3)
        full = model(ids, passes=3).logits
    targets = labels[:, 1:] != -100
    wanted = targets.any(dim=0)  # positions whose next token is a target in some row
    assert out.logits.shape == (2, int(wanted.sum()), full.shape[-1])
    torch.testing.assert_close(out.logits, full[:, :-1][:, wanted], atol=ATOL, rtol=ATOL)
    manual = nn.functional.cross_entropy(full[:, :-1][targets], labels[:, 1:][targets])
    torch.testing.assert_close(out.loss, manual, atol=ATOL, rtol=ATOL)


def test_num_items_in_batch_sums_the_loss_and_divides_by_it(models):
    ids = random_ids(2, 2 * L + 5, seed=5)
    labels = ids.clone()
    labels[:, : 2 * L] = -100
    with torch.no_grad():
        mean = models["llama"](ids, labels=labels).loss
        scaled = models["llama"](ids, labels=labels, num_items_in_batch=40).loss
    targets = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(scaled, mean * targets / 40, atol=ATOL, rtol=ATOL)


def test_labels_loss_is_differentiable(models):
    model = copy.deepcopy(models["llama"]).train()
    ids = random_ids(2, 2 * L + 5, seed=8)
    labels = ids.clone()
    labels[:, : 2 * L] = -100
    model(ids, labels=labels, passes=2).loss.backward()
    no_grad = [n for n, p in model.fast_weights.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, f"fast-weight parameters without gradient: {no_grad}"


# ------------------------------------------------------------ batched and beam generation


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_left_padded_batched_generate_equals_unbatched(models, family, eviction):
    model = models[family]
    prompts = [random_ids(1, 13, seed=9), random_ids(1, 5, seed=10)]  # pads 0 and L
    ids = torch.zeros(2, 13, dtype=torch.long)
    mask = torch.zeros(2, 13, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, 13 - prompt.shape[1] :], mask[row, 13 - prompt.shape[1] :] = prompt[0], 1
    settings = dict(max_new_tokens=20, do_sample=False, passes=3, eviction=eviction, pad_token_id=0)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **settings)
        for row, prompt in enumerate(prompts):
            alone = model.generate(prompt, **settings)
            assert torch.equal(batched[row, 13 - prompt.shape[1] :], alone[0]), f"row {row}"


@pytest.mark.parametrize("family", ["llama", "jet_nemotron"])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_beam_search_scores_equal_teacher_forced_log_probs(models, family, eviction):
    """Beam search reorders the SleepCache (states, snapshot, chunk buffer, keys) every step; with
    length_penalty=0 each beam's score is the sum of its tokens' log-probabilities, which the
    teacher-forced forward must reproduce across the evictions during generation."""
    model = models[family]
    prompt = random_ids(1, 13, seed=11)
    with torch.no_grad():
        beams = model.generate(
            prompt,
            max_new_tokens=12,
            num_beams=3,
            num_return_sequences=3,
            do_sample=False,
            length_penalty=0.0,
            output_scores=True,
            return_dict_in_generate=True,
            passes=3,
            eviction=eviction,
        )
        sequences = beams.sequences
        assert sequences.shape == (3, 25) and torch.equal(sequences[:, :13], prompt.expand(3, -1))
        assert len({tuple(s.tolist()) for s in sequences}) == 3
        logits = model(sequences, passes=3, eviction=eviction).logits[:, 12:-1]
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, sequences[:, 13:, None])[..., 0].sum(-1)
    torch.testing.assert_close(beams.sequences_scores, log_probs, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_batch_select_and_repeat_keep_each_rows_cache(models, eviction):
    """transformers' cache-batch operations (contrastive/assisted decoding, num_return_sequences)
    on a SleepCache mid-chunk: continuing the selected (or repeated) rows equals continuing the
    whole batch and taking those rows."""
    model = models["jet_nemotron"]
    ids = random_ids(3, 2 * L + 5, seed=13)  # 2 evictions, then 5 tokens into the third chunk
    more = random_ids(3, L, seed=14)  # crosses the next boundary
    with torch.no_grad():
        whole = model(ids, eviction=eviction, passes=2)
        expected = model(more, cache=whole.past_key_values, eviction=eviction, passes=2).logits
        picked = model(ids, eviction=eviction, passes=2).past_key_values
        picked.batch_select_indices(torch.tensor([2, 0]))
        got = model(more[[2, 0]], cache=picked, eviction=eviction, passes=2).logits
        repeated = model(ids[:1], eviction=eviction, passes=2).past_key_values
        repeated.batch_repeat_interleave(2)
        twice = model(more[[0, 0]], cache=repeated, eviction=eviction, passes=2).logits
    torch.testing.assert_close(got, expected[[2, 0]], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(twice, expected[[0, 0]], atol=ATOL, rtol=ATOL)


def test_generate_reports_evictions_in_its_cache(models):
    cache = SleepCache()
    with torch.no_grad():
        models["llama"].generate(random_ids(1, 13, seed=12), max_new_tokens=20, do_sample=False, cache=cache)
    assert cache.seen_tokens == 13 + 19  # the last generated token is never fed back
    assert cache.stats["evictions"] == (13 + 19) // L
    assert cache.attention_tokens == (13 + 19) % L


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_continues_from_a_returned_cache_as_one_call(models, family):
    """generate(sequence_so_far, cache=out.cache) consumes only the tokens after what the cache
    holds, with or without the whole sequence's attention mask, and ends where one call ends."""
    model = models[family]
    prompt = random_ids(1, 2 * L + 3, seed=13)
    with torch.no_grad():
        whole = model.generate(prompt, max_new_tokens=L + 3, do_sample=False)
        first = model.generate(prompt, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        cache = first.cache
        assert cache and cache.seen_tokens == prompt.shape[1] + 3
        for mask in (None, torch.ones_like(first.sequences)):
            resumed_cache = copy.deepcopy(cache)
            resumed = model.generate(
                first.sequences,
                attention_mask=mask,
                cache=resumed_cache,
                max_new_tokens=L - 1,
                do_sample=False,
            )
            assert torch.equal(resumed, whole)
            assert resumed_cache.seen_tokens == whole.shape[1] - 1


def test_continuing_with_only_the_new_tokens_is_a_clear_error(models):
    model = models["llama"]
    with torch.no_grad():
        first = model.generate(random_ids(1, 13, seed=14), max_new_tokens=3, return_dict_in_generate=True)
        with pytest.raises(ValueError, match="pass the whole sequence so far"):
            model.generate(first.sequences[:, -1:], cache=first.cache, max_new_tokens=2)
        with pytest.raises(ValueError, match="attention_mask has 5 columns"):
            model(
                random_ids(1, 4, seed=1),
                attention_mask=torch.ones(1, 5, dtype=torch.long),
                cache=SleepCache(),
            )


@pytest.mark.parametrize("family", ["llama", "jet_nemotron"])
def test_generate_gives_every_left_padded_row_what_it_gets_alone(models, family):
    """A tokenizer's padding=True pads rows by amounts that are not multiples of L: each row
    is still chunked (and generated) exactly as its prompt alone, whatever it is batched with."""
    model = models[family]
    lengths = [2 * L + 3, 2 * L - 1, L + 3, 2 * L + 3 - L]  # pads 0, 4, 8 (a whole chunk), 8
    width = max(lengths)
    prompts = [random_ids(1, n, seed=20 + i) for i, n in enumerate(lengths)]
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - prompt.shape[1] :], mask[row, width - prompt.shape[1] :] = prompt[0], 1
    new = 2 * L + 2  # the rows cross chunk boundaries while generating
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about any more
        batched = model.generate(
            ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0
        )
        alone = [model.generate(p, max_new_tokens=new, do_sample=False, pad_token_id=0) for p in prompts]
    assert batched.shape == (len(lengths), width + new)
    for row, (prompt, single) in enumerate(zip(prompts, alone, strict=True)):
        assert torch.equal(batched[row, : width - prompt.shape[1]], ids[row, : width - prompt.shape[1]])
        assert torch.equal(batched[row, width - prompt.shape[1] :], single[0]), f"row {row}"

    # One group (every row padded by 4 modulo L) keeps the whole output, scores included.
    with torch.no_grad():
        out = model.generate(
            ids[1:2], attention_mask=mask[1:2], max_new_tokens=3, do_sample=False, pad_token_id=0,
            return_dict_in_generate=True, output_scores=True,
        )  # fmt: skip
    assert torch.equal(out.sequences[0, width - lengths[1] :], alone[1][0, : lengths[1] + 3])
    assert len(out.scores) == 3
    # Several groups cannot merge per-step scores: said, not guessed.
    with pytest.raises(ValueError, match="left padding differs modulo the window L=8"):
        model.generate(
            ids, attention_mask=mask, max_new_tokens=2, pad_token_id=0, return_dict_in_generate=True
        )


def test_generate_pads_rows_that_finish_early(models):
    model = models["llama"]
    prompts = [random_ids(1, n, seed=30 + n) for n in (L + 3, L + 1)]
    ids = torch.zeros(2, L + 3, dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = prompts[0][0], 1
    ids[1, 2:], mask[1, 2:] = prompts[1][0], 1
    with torch.no_grad():
        first = model.generate(prompts[0], max_new_tokens=1, do_sample=False, pad_token_id=0)
        eos = int(first[0, -1])  # row 0 stops after one token, row 1 runs on
        batched = model.generate(
            ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=eos
        )
        alone = model.generate(
            prompts[1], max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=eos
        )
    assert torch.equal(batched[1, 2 : 2 + alone.shape[1]], alone[0])
    assert batched[0, L + 3] == eos and bool((batched[0, L + 4 :] == 0).all())


class _StopAfter(StoppingCriteria):
    """Per-row state sized to the batch it was made for, and the prompt length it was given
    (as lm-eval's MultiTokenEOSCriteria): row i stops once it has `counts[i]` new tokens."""

    def __init__(self, prompt_length: int, counts: list[int]):
        self.prompt_length, self.counts = prompt_length, counts
        self.done = [False] * len(counts)

    def __call__(self, input_ids, scores, **kwargs):
        for i, count in enumerate(self.counts):  # an IndexError if shown fewer rows than made for
            self.done[i] = self.done[i] or input_ids[i, self.prompt_length :].shape[0] >= count
        return torch.tensor(self.done)


def test_grouped_generate_keeps_absolute_lengths_and_batch_sized_stopping_criteria(models):
    """Rows generated in groups (left padding differing modulo L) still honour max_length, which
    counts the padding columns a group drops, and user stopping criteria that keep per-row state
    for the whole batch (lm-eval's): each row stops where it stops alone."""
    model = models["llama"]
    prompts = [random_ids(1, n, seed=40 + n) for n in (L + 5, L + 1)]
    width = L + 5
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - prompt.shape[1] :], mask[row, width - prompt.shape[1] :] = prompt[0], 1
    with torch.no_grad():
        by_length = model.generate(
            ids, attention_mask=mask, max_length=width + 5, do_sample=False, pad_token_id=0
        )
        stopped = model.generate(
            ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
            stopping_criteria=StoppingCriteriaList([_StopAfter(width, [3, 6])]),
        )  # fmt: skip
        alone = [model.generate(p, max_new_tokens=6, do_sample=False, pad_token_id=0) for p in prompts]
    assert by_length.shape[1] == width + 5  # not width + 5 + the dropped padding
    for row, (prompt, single) in enumerate(zip(prompts, alone, strict=True)):
        start = width - prompt.shape[1]
        assert torch.equal(by_length[row, start:], single[0, : prompt.shape[1] + 5])
    assert torch.equal(stopped[0, : width + 3], alone[0][0, : width + 3])
    assert torch.equal(stopped[1, width - prompts[1].shape[1] :], alone[1][0, : prompts[1].shape[1] + 6])


# ------------------------------------------------------------ CUDA


@requires_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_conversion_is_the_identity_and_generates(family):
    base = load_base(family).cuda()
    ids = random_ids(2, 30, seed=13).cuda()
    with torch.no_grad():
        expected = base(ids).logits
        model = SleepRetrofitForCausalLM.from_base(base, settings=SleepSettings(window=64)).eval()
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-3, rtol=1e-3)
        generated = model.generate(ids[:1, :13], max_new_tokens=20, do_sample=False, window=L, passes=3)
        labels = generated.clone()
        labels[:, :13] = -100
        forced = model(generated, labels=labels, window=L, passes=3).logits
    assert torch.equal(forced.argmax(-1), generated[:, 13:])


def test_target_logits_splits_the_compacted_logits_per_row():
    from sleep_retrofit.modeling import target_logits

    labels = torch.tensor([[-100, 5, -100, 7], [-100, -100, 6, -100]])
    # columns 0, 1, 2 predict a target in some row -> the model returns 3 logit columns
    logits = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    (first, first_targets), (second, second_targets) = target_logits(logits, labels)
    assert torch.equal(first, logits[0, [0, 2]]) and first_targets.tolist() == [5, 7]
    assert torch.equal(second, logits[1, [1]]) and second_targets.tolist() == [6]
    with pytest.raises(ValueError, match="logits cover 4 positions, expected 3"):
        target_logits(torch.zeros(2, 4, 4), labels)


class _CopyPreviousToken(torch.nn.Module):
    """A stand-in model whose prediction at every position is the input token there (so the
    teacher-forced prediction of target j+1 is gold target j), returning logits compacted to
    the target positions like SleepRetrofitForCausalLM does with labels."""

    vocab_size = 10

    def forward(self, input_ids, labels, **kwargs):
        logits = torch.nn.functional.one_hot(input_ids, self.vocab_size).float()
        wanted = (labels[:, 1:] != -100).any(dim=0)
        return types.SimpleNamespace(logits=logits[:, :-1][:, wanted])


def test_free_running_targets_feed_back_the_models_own_predictions():
    from sleep_retrofit.modeling import free_running_targets

    ids = torch.tensor([[1, 2, 3, 7, 8, 9], [0, 4, 3, 6, 5, 7]])
    labels = torch.full_like(ids, -100)
    labels[:, 3:] = ids[:, 3:]  # three targets per row, predicted from columns 2, 3, 4
    predicted, teacher_forced = free_running_targets(_CopyPreviousToken(), ids, labels)
    # Own predictions: target 0 copies column 2 (token 3); it is fed back, so every later one does too.
    assert predicted.tolist() == [[3, 3, 3], [3, 3, 3]]
    # The first forward is the teacher-forced one: it copies the gold targets shifted by one.
    assert [logits.argmax(-1).tolist() for logits, _ in teacher_forced] == [[3, 7, 8], [3, 6, 5]]
    assert [targets.tolist() for _, targets in teacher_forced] == [[7, 8, 9], [6, 5, 7]]
    # Restricted choices: target j picks among its own allowed tokens only.
    choices = torch.tensor([[3, 4], [5, 3], [6, 8]])
    predicted, _ = free_running_targets(_CopyPreviousToken(), ids, labels, choices)
    assert predicted.tolist() == [[3, 3, 6], [3, 3, 6]]  # token 3 is not allowed for target 2
    with pytest.raises(ValueError, match="choices has 2 rows"):
        free_running_targets(_CopyPreviousToken(), ids, labels, choices[:2])
    uneven = labels.clone()
    uneven[0, 3] = -100
    with pytest.raises(ValueError, match="same number of targets"):
        free_running_targets(_CopyPreviousToken(), ids, uneven)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_long_prompt_shows_ingestion_progress_on_a_terminal(models, monkeypatch):
    from sleep_retrofit.modeling import PROGRESS_MIN_CHUNKS

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with torch.no_grad():
        models["llama"](random_ids(1, L * PROGRESS_MIN_CHUNKS + 3, seed=2), logits_to_keep=1)
    assert "sleep: reading the prompt" in terminal.getvalue()
    assert f"/{L * PROGRESS_MIN_CHUNKS + 3} [" in terminal.getvalue()  # counted in prompt tokens
    short = _Terminal()
    monkeypatch.setattr(sys, "stderr", short)
    with torch.no_grad():
        models["llama"](random_ids(1, 3 * L, seed=2), logits_to_keep=1)  # a few chunks: no bar
    assert short.getvalue() == ""


@pytest.mark.parametrize("requested", ["flash_attention_2", "flex_attention"])
def test_an_attention_sleep_cannot_feed_is_replaced_by_sdpa_with_a_warning(requested):
    model = convert("llama")
    ids = random_ids(1, 2 * L + 3, seed=3)
    with torch.no_grad():
        expected = model(ids).logits
    model.__dict__.pop("_engines", None)
    model.base.config._attn_implementation_internal = (
        requested  # as a load with attn_implementation=... sets it
    )
    with pytest.warns(
        UserWarning, match=f"attn_implementation='{requested}' is not supported under sleep.*sdpa"
    ):
        with torch.no_grad():
            got = model(ids).logits
    assert model.base.config._attn_implementation == "sdpa"
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("requested", ["eager", "sdpa"])
def test_eager_and_sdpa_are_kept(requested):
    model = convert("llama")
    model.base.config._attn_implementation_internal = requested
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.engine()
    assert model.base.config._attn_implementation == requested

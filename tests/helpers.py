"""Builders shared by the test modules: tiny random base models, non-trivial fast weights,
random token ids and the kernels' relative error. Imported as `from helpers import ...` (pytest
puts tests/ on sys.path, as for conftest)."""

from __future__ import annotations

import torch
from conftest import FIXTURES
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig

from sleep_retrofit.modeling import SleepRetrofitForCausalLM
from sleep_retrofit.retrofit import FastWeightBlock

# The tiny Llama-family decoder of the conversion tests: with the family's default plan it gets
# GDN blocks after layers 3 and 7.
TINY_LLAMA = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
)
# The tiny checkpoints under tests/fixtures, by model family.
FIXTURE_MODELS = {"jet_nemotron": "jet_nemotron_tiny", "ouro": "ouro_tiny"}


def tiny_llama_config(config_class: type[PretrainedConfig] = LlamaConfig, **overrides) -> PretrainedConfig:
    """`config_class` (a Llama-family config) with the TINY_LLAMA sizes, `overrides` applied."""
    return config_class(**{**TINY_LLAMA, **overrides})


def load_fixture_model(family: str) -> nn.Module:
    """The tiny "jet_nemotron" or "ouro" fixture checkpoint, in eval mode."""
    return AutoModelForCausalLM.from_pretrained(FIXTURES / FIXTURE_MODELS[family]).eval()


def randomise_output_projections(*blocks: FastWeightBlock, seed: int = 1, std: float = 0.05) -> None:
    """Give the zero-initialised output projections of `blocks` small random weights, as training
    would: at insertion a block is the identity, and with the identity most invariants would hold
    trivially. One generator serves all blocks, in order."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in blocks:
            for projection in block.output_projections():
                projection.weight.copy_(std * torch.randn(projection.weight.shape, generator=generator))


def randomise_fast_weights(model: SleepRetrofitForCausalLM, seed: int = 1) -> None:
    """randomise_output_projections over every block inserted into a converted model."""
    randomise_output_projections(*model.fast_weights.values(), seed=seed)


def random_ids(batch: int, length: int, seed: int = 0, vocab: int = 100) -> torch.Tensor:
    """Token ids in [1, vocab) (0 is the pad id of some tiny configs), [batch, length]."""
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zero or empty)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.numel() == 0:
        return 0.0
    scale = expected.detach().abs().max().clamp_min(1e-30)
    return ((actual.detach() - expected.detach()).abs().max() / scale).item()


def converted_with_active_blocks(directory, window: int, passes: int):
    """`sleep-retrofit convert` of the tiny-llama preset into `directory`, saved again with its
    inserted blocks no longer the identity (randomise_fast_weights), so that the fast-weight
    state, and with it N, changes the outputs. Returns the directory."""
    from sleep_retrofit.convert import convert

    directory = convert("tiny-llama", directory, window=window, passes=passes)
    model = AutoModelForCausalLM.from_pretrained(directory)
    randomise_fast_weights(model)
    model.save_pretrained(directory)
    return directory

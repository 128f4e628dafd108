"""Built-in tiny random base models, so that every command runs offline.

``sleep-retrofit convert --model tiny-ouro --out DIR`` needs no download: a preset is a small
config of a supported family (hidden 64) with deterministic random weights and a character-level
tokenizer built in code. The weights are random, so generated text is noise; presets exist to
exercise conversion, loading, sleep and generation end to end, and as small test models.

=====================  ==========================================================================
preset                 base model
=====================  ==========================================================================
tiny-ouro              Ouro: 4 shared layers looped 4 times (total_ut_steps), 4 heads
tiny-jet-nemotron      Jet-Nemotron: 8 layers, jet x6 + attn (layer 3) + swa (layer 5, window 64)
tiny-llama             Llama: 8 layers, 4 heads / 2 KV heads
tiny-qwen2             Qwen2: 8 layers, 4 heads / 2 KV heads, q/k/v biases
=====================  ==========================================================================

All: hidden 64, intermediate 128, vocab 100 (the preset tokenizer), max_position_embeddings 65536,
RoPE theta 10000, untied embeddings (tied for Jet-Nemotron, as upstream).

The tokenizer maps every character of printable ASCII (space to ``~``) and the newline to one
token; ids 0-3 are ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>`` (the order of the synthetic tasks'
tokenizers), any other character becomes ``<unk>``. No special tokens are added when encoding,
so ``tokenizer.decode(tokenizer(text).input_ids) == text`` for any text in its alphabet.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders
from tokenizers import models as tokenizer_models
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from .checks import is_int
from .models.registry import register_auto_classes

__all__ = [
    "PRESETS",
    "PRESET_ALPHABET",
    "PRESET_SPECIAL_TOKENS",
    "is_preset",
    "load_preset",
    "preset_config",
    "preset_tokenizer",
]

PRESETS: dict[str, str] = {
    "tiny-ouro": "tiny random Ouro: hidden 64, 4 shared layers looped 4 times, character tokenizer",
    "tiny-jet-nemotron": "tiny random Jet-Nemotron: hidden 64, 8 layers (6 jet, 1 attn, 1 swa), "
    "character tokenizer",
    "tiny-llama": "tiny random Llama: hidden 64, 8 layers, character tokenizer",
    "tiny-qwen2": "tiny random Qwen2: hidden 64, 8 layers, character tokenizer",
}

# Ids 0..3 in this order, as in sleep_retrofit.tasks.tokenizer.
PRESET_SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
}
# Printable ASCII (space .. '~') and the newline: one token each, ids 4..99.
PRESET_ALPHABET: tuple[str, ...] = tuple(chr(code) for code in range(32, 127)) + ("\n",)

_HIDDEN_SIZE = 64
_INTERMEDIATE_SIZE = 128
_NUM_HEADS = 4
_MAX_POSITIONS = 65536
_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
_JET_LAYER_TYPES = ["jet", "jet", "jet", "attn", "jet", "swa", "jet", "jet"]


def is_preset(name: Any) -> bool:
    """Whether ``name`` is a built-in preset name (so a CLI can tell presets from paths)."""
    return isinstance(name, str) and name in PRESETS


def _check_name(name: Any) -> str:
    if not is_preset(name):
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return name


def preset_tokenizer(*, padding_side: str = "left") -> PreTrainedTokenizerFast:
    """The presets' character-level tokenizer (module doc), built in code.

    A ``PreTrainedTokenizerFast`` (a BPE model without merges, so every character is a token, and a
    decoder that concatenates): saves with ``save_pretrained`` and loads back with ``AutoTokenizer``.
    Left padding by default, as batched generation wants.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    vocabulary = {token: i for i, token in enumerate([*PRESET_SPECIAL_TOKENS.values(), *PRESET_ALPHABET])}
    # A BPE model without merges keeps every character a token of its own.
    unk_token = PRESET_SPECIAL_TOKENS["unk_token"]
    backend = Tokenizer(tokenizer_models.BPE(vocab=vocabulary, merges=[], unk_token=unk_token))
    # Without it tokenizers would join the decoded characters with spaces.
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side=padding_side,
        model_max_length=_MAX_POSITIONS,
        **PRESET_SPECIAL_TOKENS,
    )


def _special_token_ids() -> dict[str, int]:
    """pad/bos/eos ids of the preset tokenizer (fixed by construction: specials come first)."""
    ids = {name: i for i, name in enumerate(PRESET_SPECIAL_TOKENS)}
    return {
        "pad_token_id": ids["pad_token"],
        "bos_token_id": ids["bos_token"],
        "eos_token_id": ids["eos_token"],
    }


def preset_config(name: str) -> PreTrainedConfig:
    """The transformers config of preset ``name`` (an OuroConfig, JetNemotronConfig, LlamaConfig or
    Qwen2Config; see the module doc).

    Raises:
        ValueError: for an unknown name, listing the valid presets.
    """
    _check_name(name)
    common: dict[str, Any] = {
        "vocab_size": len(PRESET_SPECIAL_TOKENS) + len(PRESET_ALPHABET),
        "hidden_size": _HIDDEN_SIZE,
        "intermediate_size": _INTERMEDIATE_SIZE,
        "num_attention_heads": _NUM_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": _MAX_POSITIONS,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "rope_parameters": dict(_ROPE),
        **_special_token_ids(),
    }
    if name == "tiny-ouro":
        from .models.ouro import OuroConfig

        return OuroConfig(
            **common, num_hidden_layers=4, num_key_value_heads=4, total_ut_steps=4, tie_word_embeddings=False
        )
    if name == "tiny-jet-nemotron":
        from .models.jet_nemotron import JetNemotronConfig

        return JetNemotronConfig(
            **common,
            num_hidden_layers=len(_JET_LAYER_TYPES),
            num_key_value_heads=2,
            layer_types=list(_JET_LAYER_TYPES),
            efficient_attention_config={
                "jet": {
                    "mode": "chunk",
                    "expand_v": 2.0,
                    "num_heads": 2,
                    "head_dim": 32,
                    "norm_eps": 1e-5,
                    "conv_size": 4,
                    "dconv_generator_reduction": 8,
                },
                "swa": {"window_size": 64},
            },
            tie_word_embeddings=True,
        )
    config_class = LlamaConfig if name == "tiny-llama" else Qwen2Config
    return config_class(**common, num_hidden_layers=8, num_key_value_heads=2, tie_word_embeddings=False)


def load_preset(
    name: str, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build preset ``name`` with random weights drawn from ``seed``, in eval mode, and its tokenizer.

    The same seed gives identical weights; the global torch RNG is left as it was.

    Raises:
        ValueError: for an unknown name (listing the valid presets) or a dtype that is not floating.
    """
    config = preset_config(name)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    # Idempotent; makes AutoModelForCausalLM know the native families even without `import sleep_retrofit`.
    register_auto_classes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(dtype).eval()
    model.config.dtype = dtype
    return model, preset_tokenizer()

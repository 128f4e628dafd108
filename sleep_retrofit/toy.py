"""The paper's from-scratch toy hybrid: attention and Gated DeltaNet blocks interleaved
(attn -> GDN -> attn -> GDN for depth 4), every block looped by sleep.

Built from the toolkit's own pieces: a random Llama-family base supplies the attention
layers (each with its MLP), and a GDN block (with an MLP, so every block is a full layer)
is inserted after each of them. Unlike a retrofit, nothing starts as the identity: the
fast-weight output projections get a normal init like every other matrix.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .modeling import SleepRetrofitForCausalLM
from .retrofit import FastWeightBlock, FastWeightPlan
from .sleep import SleepSettings


def build_toy_hybrid(
    vocab_size: int,
    *,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    gdn_heads: int | None = None,
    gdn_head_dim: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    passes: int = 1,
    window: int = 24,
    eviction: str = "hard",
    pad_token_id: int = 0,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> SleepRetrofitForCausalLM:
    """A randomly initialised toy hybrid of `num_layers` blocks (even: half attention, half GDN).

    gdn_heads: GDN heads; default num_heads.
    gdn_head_dim: GDN head size (expand_v 1); default hidden_size // gdn_heads. Set it to widen
        the fast-weight state with more heads of a fixed size (a compute-matched baseline).
    The loop body spans the whole stack, as in the paper's toy model.
    """
    if num_layers < 2 or num_layers % 2:
        raise ValueError(f"num_layers must be an even number >= 2 (attn/GDN pairs), got {num_layers}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    gdn_heads = num_heads if gdn_heads is None else gdn_heads
    if gdn_head_dim is None:
        if hidden_size % gdn_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by gdn_heads {gdn_heads}")
        gdn_head_dim = hidden_size // gdn_heads
    attention_layers = num_layers // 2
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=attention_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    plan = FastWeightPlan(
        "gdn",
        list(range(attention_layers)),
        with_mlp=True,
        mixer_kwargs={"num_heads": gdn_heads, "head_dim": gdn_head_dim, "expand_v": 1},
    ).resolve(hidden_size)
    settings = SleepSettings(passes=passes, window=window, eviction=eviction, loop_span=(0, attention_layers))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        base = LlamaForCausalLM(config)
        model = SleepRetrofitForCausalLM.from_base(base, plan=plan, settings=settings)
        with torch.no_grad():
            for block in model.fast_weights.values():
                assert isinstance(block, FastWeightBlock)
                for projection in block.output_projections():
                    projection.weight.normal_(0.0, initializer_range)
    finally:
        torch.random.set_rng_state(generator_state)
    return model

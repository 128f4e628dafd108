"""Building blocks shared by the native model families (Ouro, Jet-Nemotron).

Both families are Qwen2 descendants, so the pieces come from transformers' Qwen2 code where
they fit and are only wrapped here to give them one documented home:

* ``RMSNorm``            - Qwen2RMSNorm (``weight``; eps; computes in float32).
* ``RotaryEmbedding``    - Qwen2RotaryEmbedding: reads ``config.rope_parameters`` (transformers 5
                           standardises legacy ``rope_theta`` / ``rope_scaling`` into it) and supports
                           every ``ROPE_INIT_FUNCTIONS`` type. ``forward(x, position_ids) -> (cos, sin)``.
* ``MLP``                - Qwen2MLP: ``gate_proj`` / ``up_proj`` / ``down_proj`` without bias,
                           ``down(act(gate(x)) * up(x))``.
* ``SelfAttention``      - Qwen2-style attention with GQA, optional q/k/v bias, ``o_proj`` without bias,
                           optional sliding window, a transformers ``Cache`` slot chosen per call, and any
                           registered attention function (``config._attn_implementation``: eager, sdpa, ...).
* ``build_attention_masks`` - the causal (and optional sliding-window) masks for one forward, built with
                           transformers' ``create_causal_mask`` so padding, cache offsets and the attention
                           implementation are handled the way transformers handles them.
* ``NativePreTrainedModel`` - the ``PreTrainedModel`` base both families share (strict checkpoint loading,
                           ``model.`` prefix, gradient checkpointing, sdpa).
* ``CausalLMHeadMixin``  - the ``...ForCausalLM`` plumbing: tied ``lm_head``, decoder accessors, tensor /
                           pipeline-parallel plans and ``logits_to_keep``.
* ``prepare_decoder_inputs`` / ``default_position_ids`` - the argument checks and defaults every decoder
                           forward starts with.

Shapes: hidden states ``[B, T, hidden_size]``; per-head tensors ``[B, heads, T, head_dim]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask, sliding_window_overlay
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2MLP,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
    repeat_kv,
)

from .loading import StrictLoadingMixin

__all__ = [
    "MLP",
    "CausalLMHeadMixin",
    "NativePreTrainedModel",
    "RMSNorm",
    "RotaryEmbedding",
    "SelfAttention",
    "apply_rotary_pos_emb",
    "build_attention_masks",
    "default_position_ids",
    "eager_attention_forward",
    "prepare_decoder_inputs",
    "repeat_kv",
]


class RMSNorm(Qwen2RMSNorm):
    """Root-mean-square norm: ``weight * x / sqrt(mean(x^2) + eps)``, computed in float32.

    Args:
        hidden_size: size of the normalised (last) dimension; the parameter is ``weight`` [hidden_size].
        eps: added to the mean square.
    """


class RotaryEmbedding(Qwen2RotaryEmbedding):
    """Rotary position embedding for a config with ``rope_parameters`` (transformers 5 layout).

    ``forward(x, position_ids)`` returns ``(cos, sin)``, each ``[B, T, head_dim]`` in ``x.dtype``, for
    :func:`apply_rotary_pos_emb`. ``head_dim`` is ``config.head_dim`` when set, else
    ``hidden_size // num_attention_heads``. Scaled RoPE types (linear, dynamic, yarn, llama3, ...)
    come from ``rope_parameters["rope_type"]``.
    """


class MLP(Qwen2MLP):
    """Gated feed-forward: ``down_proj(act(gate_proj(x)) * up_proj(x))``, no biases.

    Reads ``config.hidden_size``, ``config.intermediate_size`` and ``config.hidden_act``.
    """


class SelfAttention(nn.Module):
    """Qwen2-style causal self-attention with rotary embeddings and grouped-query heads.

    Parameters (state-dict names as in Qwen2): ``q_proj`` [H*d, hidden], ``k_proj`` / ``v_proj``
    [KV*d, hidden] (with biases when ``qkv_bias``), ``o_proj`` [hidden, H*d] (never a bias).

    Args:
        config: reads ``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``
            (optional), ``attention_dropout`` and ``_attn_implementation``.
        layer_idx: default cache slot of this module.
        qkv_bias: whether q/k/v projections carry a bias (Qwen2 / Jet-Nemotron: yes; Ouro: no).
        sliding_window: when set, the layer is a sliding-window layer. The window is enforced by the
            attention mask (see :func:`build_attention_masks`); it is also handed to the attention
            function, which flash-attention kernels use.
    """

    def __init__(
        self,
        config: PreTrainedConfig,
        layer_idx: int,
        *,
        qkv_bias: bool,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads or config.num_attention_heads
        if self.num_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        # Read by the attention functions (eager's repeat_kv, sdpa's GQA path).
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = float(getattr(config, "attention_dropout", 0.0) or 0.0)
        self.is_causal = True
        self.sliding_window = sliding_window

        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        cache_layer_idx: int | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over the cached keys/values plus the current tokens.

        Args:
            hidden_states: [B, T, hidden_size].
            position_embeddings: ``(cos, sin)`` from :class:`RotaryEmbedding` for these T positions.
            attention_mask: the prepared mask for this layer type (from :func:`build_attention_masks`),
                or None for plain causal attention without a cache offset or padding.
            cache: a transformers Cache; the new keys/values are appended to slot
                ``cache_layer_idx`` (default ``self.layer_idx``) and the full history is attended.
            cache_layer_idx: cache slot to use on this call. A module whose weights are shared across
                several passes (Ouro's loop) uses one slot per pass.
            **kwargs: forwarded to the attention function (e.g. ``output_attentions``).

        Returns:
            ``(output [B, T, hidden_size], attention weights or None)``.
        """
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)

        if cache is not None:
            slot = self.layer_idx if cache_layer_idx is None else cache_layer_idx
            key_states, value_states = cache.update(key_states, value_states, slot)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


def build_attention_masks(
    config: PreTrainedConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Cache | None,
    position_ids: torch.Tensor | None,
    *,
    sliding_window: int | None = None,
    full_cache_layer_idx: int | None = None,
    sliding_cache_layer_idx: int | None = None,
) -> dict[str, torch.Tensor | None]:
    """Masks for one forward pass, keyed by layer kind.

    Args:
        config: the model config (its ``_attn_implementation`` picks the mask format).
        inputs_embeds: [B, T, hidden] (only batch, length, dtype and device are read).
        attention_mask: 2D padding mask [B, past + T] (1 = keep), an already prepared 4D mask, or None.
        cache: the Cache of this forward (gives the number of already seen tokens), or None.
        position_ids: [B, T] or [1, T].
        sliding_window: when given, also build the ``"sliding_attention"`` mask, in which a query at
            position q sees keys q - sliding_window + 1 ... q.
        full_cache_layer_idx / sliding_cache_layer_idx: which cache slot sizes each mask (defaults: the
            first full-attention slot; the first sliding slot if the cache has one, else the full one).

    Returns:
        ``{"full_attention": mask}`` plus ``"sliding_attention"`` when ``sliding_window`` is set. A mask
        is None when the attention function can use its own causal path (e.g. sdpa without padding).
    """
    if isinstance(attention_mask, dict):  # already prepared, e.g. by generate()
        return attention_mask
    mask_kwargs = {
        "config": config,
        "inputs_embeds": inputs_embeds,
        "attention_mask": attention_mask,
        "cache": cache,
        "position_ids": position_ids,
    }
    masks = {"full_attention": create_causal_mask(**mask_kwargs, layer_idx=full_cache_layer_idx)}
    if sliding_window is not None:
        if sliding_cache_layer_idx is None and isinstance(cache, Cache) and True in cache.is_sliding:
            sliding_cache_layer_idx = cache.is_sliding.index(True)
        # The window comes from the caller (not config.sliding_window), so it is overlaid on the causal
        # mask here rather than read by create_sliding_window_causal_mask.
        masks["sliding_attention"] = create_causal_mask(
            **mask_kwargs,
            and_mask_function=sliding_window_overlay(sliding_window),
            layer_idx=sliding_cache_layer_idx
            if sliding_cache_layer_idx is not None
            else full_cache_layer_idx,
        )
    return masks


# --------------------------------------------------------------------------------------------- model plumbing


class NativePreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    """What the native families' ``...PreTrainedModel`` classes share; each sets ``config_class``,
    ``_no_split_modules`` and its attention / compile support flags."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_attention_backend = True


class CausalLMHeadMixin:
    """The ``...ForCausalLM`` plumbing of the native families: ``self.model`` (the decoder) and
    ``self.lm_head`` (tied to the embeddings when ``config.tie_word_embeddings``)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def get_decoder(self) -> nn.Module:
        return self.model

    def set_decoder(self, decoder: nn.Module) -> None:
        self.model = decoder

    @staticmethod
    def kept_positions(logits_to_keep: int | torch.Tensor, device: torch.device) -> slice | torch.Tensor:
        """The sequence positions to compute logits for: the last ``logits_to_keep`` when an int > 0,
        all for 0, or the given positions when a 1D tensor."""
        if isinstance(logits_to_keep, int):
            return slice(-logits_to_keep, None) if logits_to_keep > 0 else slice(None)
        return logits_to_keep.to(device)


def prepare_decoder_inputs(
    model: PreTrainedModel,
    input_ids: torch.LongTensor | None,
    inputs_embeds: torch.Tensor | None,
    use_cache: bool | None,
    output_hidden_states: bool | None,
    kwargs: dict,
) -> tuple[torch.Tensor, bool, bool]:
    """Check a decoder forward's inputs and fill in its defaults.

    Embeds ``input_ids`` [B, T] with ``model.embed_tokens`` unless ``inputs_embeds`` [B, T, hidden] is
    given (exactly one of them), rejects ``output_attentions`` and drops ``return_dict`` from
    ``kwargs``, and resolves ``use_cache`` (off under gradient checkpointing in training) and
    ``output_hidden_states`` from the config.

    Returns:
        ``(inputs_embeds, use_cache, output_hidden_states)``.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if kwargs.pop("output_attentions", None):
        raise ValueError(f"output_attentions is not supported by {type(model).__name__}")
    kwargs.pop("return_dict", None)
    if use_cache is None:
        use_cache = model.config.use_cache
    if model.gradient_checkpointing and model.training and torch.is_grad_enabled():
        use_cache = False
    if output_hidden_states is None:
        output_hidden_states = model.config.output_hidden_states

    if inputs_embeds is None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [B, T], got {list(input_ids.shape)}")
        inputs_embeds = model.embed_tokens(input_ids)
    if inputs_embeds.dim() != 3:
        raise ValueError(
            f"inputs_embeds must have shape [B, T, hidden_size], got {list(inputs_embeds.shape)}"
        )
    return inputs_embeds, bool(use_cache), bool(output_hidden_states)


def default_position_ids(
    inputs_embeds: torch.Tensor, past_seen: int, attention_mask: torch.Tensor | None = None
) -> torch.LongTensor:
    """Position ids for the T current tokens.

    Without a mask: ``past_seen + 0..T-1``, shape [1, T]. With a 2D padding mask [B, past + T]: the
    number of real tokens before each token, shape [B, T], so a left-padded row gets the positions
    of the unpadded sequence.
    """
    seq_len = inputs_embeds.shape[1]
    if attention_mask is not None:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]
    return torch.arange(seq_len, device=inputs_embeds.device).unsqueeze(0) + past_seen

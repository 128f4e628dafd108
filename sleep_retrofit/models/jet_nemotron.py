"""Jet-Nemotron (NVIDIA), native and checkpoint-compatible.

Jet-Nemotron is a Qwen2.5 decoder in which most attention layers are replaced by JetBlocks (a
gated delta rule with a dynamic value conv, :class:`sleep_retrofit.layers.jet_block.JetBlock`).
``config.layer_types`` names each layer's token mixer:

* ``"attn"`` - full causal attention (q/k/v projections with bias, RoPE);
* ``"swa"``  - the same attention restricted to a sliding window of
  ``efficient_attention_config["swa"]["window_size"]`` keys (the query's own key included);
* ``"jet"``  - a JetBlock configured by ``efficient_attention_config["jet"]``.

Every layer is ``h = h + mixer(input_layernorm(h)); h = h + mlp(post_attention_layernorm(h))`` and
the mixer sits at ``layers.{i}.self_attn`` whatever its kind, so upstream checkpoints load unchanged
(``lm_head`` is tied to the embeddings and absent from them).

Same config fields, state-dict keys and numerics as NVlabs/Jet-Nemotron's remote code, without
``trust_remote_code``, its transformers <= 4.57 pin or its GPU-only Triton kernels. Unlike upstream,
padding is handled exactly (see docs/models.md): a padded token is invisible to every layer, so a
left-padded batch gives the same outputs at the real tokens as the unpadded sequences.

Cache (:class:`JetNemotronCache`): post-RoPE keys/values for ``attn`` layers, the last
``window_size - 1`` tokens for ``swa`` layers and a :class:`FastWeightState` (recurrent state plus
the last ``conv_size - 1`` raw ``v_proj`` outputs) for ``jet`` layers.
"""

from __future__ import annotations

import ast
import copy
import math
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..checks import is_int
from ..layers.jet_block import JetBlock
from ..layers.state import FastWeightState
from .common import (
    MLP,
    CausalLMHeadMixin,
    NativePreTrainedModel,
    RMSNorm,
    RotaryEmbedding,
    SelfAttention,
    build_attention_masks,
    default_position_ids,
    prepare_decoder_inputs,
)

__all__ = [
    "JetNemotronCache",
    "JetNemotronConfig",
    "JetNemotronDecoderLayer",
    "JetNemotronForCausalLM",
    "JetNemotronModel",
    "JetNemotronPreTrainedModel",
    "JetStateCacheLayer",
]

LAYER_TYPES = ("attn", "swa", "jet")

# Upstream's JetBlockConfig defaults, used for keys a config leaves out (released configs set them all).
JET_BLOCK_DEFAULTS: dict[str, Any] = {
    "mode": "chunk",
    "expand_v": 2.0,
    "num_heads": 6,
    "head_dim": 256,
    "norm_eps": 1e-5,
    "conv_size": 4,
    "dconv_generator_reduction": 8,
    "dconv_implementation": "triton",
}

# Jet-Nemotron-2B, the default configuration.
_DEFAULT_NUM_LAYERS = 28
_DEFAULT_LAYER_TYPES = ["attn" if i in (14, 19) else "swa" if i in (20, 21) else "jet" for i in range(28)]
_DEFAULT_EFFICIENT_ATTENTION_CONFIG: dict[str, dict[str, Any]] = {
    "jet": {
        "mode": "chunk",
        "expand_v": 2.6666666667,
        "num_heads": 12,
        "head_dim": 96,
        "norm_eps": "1e-5",
        "conv_size": 4,
        "dconv_generator_reduction": 8,
        "dconv_implementation": "triton",
    },
    "swa": {"window_size": 1152},
}


# --------------------------------------------------------------------------------------------- config


def _positive_int(value: Any) -> bool:
    return is_int(value) and value > 0


@strict
class JetNemotronConfig(PreTrainedConfig):
    r"""Configuration of a Jet-Nemotron model (``model_type="jet_nemotron"``).

    Qwen2 fields plus:

    * ``layer_types``: one of ``"attn"``, ``"swa"``, ``"jet"`` per layer; a list, or a string holding a
      Python list (as some released configs store it). Default: the Jet-Nemotron-2B layout (28 layers).
    * ``efficient_attention_config``: ``{"jet": {mode, expand_v, num_heads, head_dim, norm_eps,
      conv_size, dconv_generator_reduction, dconv_implementation}, "swa": {"window_size": W}}``.
      ``norm_eps`` may be a string (``"1e-5"``). Missing JetBlock keys take upstream's defaults.

    ``mode`` and ``dconv_implementation`` only name upstream kernels; here the torch kernels (and fla
    on CUDA) compute the same function whatever they say.

    Jet-Nemotron-2B (the defaults): hidden 1536, intermediate 8960, 28 layers, 12 heads / 2 KV heads,
    attn layers 14 and 19, swa layers 20 and 21 (window 1152), JetBlocks 12 x 96 with expand_v 8/3,
    vocab 151936, tied embeddings. Legacy ``rope_theta`` / ``rope_scaling`` keys of a config.json are
    folded into ``rope_parameters`` by transformers.

    Raises:
        ValueError: naming the key and the expected value, when ``layer_types`` does not have
            ``num_hidden_layers`` entries, holds an unknown type, or a layer type's
            ``efficient_attention_config`` entry is missing or invalid.
    """

    model_type = "jet_nemotron"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = _DEFAULT_NUM_LAYERS
    num_attention_heads: int = 12
    num_key_value_heads: int | None = 2
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = True
    rope_parameters: dict | None = None
    attention_dropout: float | int = 0.0
    layer_types: list[str] | str | None = None
    efficient_attention_config: dict | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if isinstance(self.layer_types, str):
            self.layer_types = self._parse_layer_types(self.layer_types)
        if self.layer_types is None:
            if self.num_hidden_layers != _DEFAULT_NUM_LAYERS:
                raise ValueError(
                    f"layer_types is required when num_hidden_layers != {_DEFAULT_NUM_LAYERS} (the default "
                    f"layout is Jet-Nemotron-2B's); expected a list of {self.num_hidden_layers} entries "
                    f"from {list(LAYER_TYPES)}"
                )
            self.layer_types = list(_DEFAULT_LAYER_TYPES)
        if self.efficient_attention_config is None:
            self.efficient_attention_config = copy.deepcopy(_DEFAULT_EFFICIENT_ATTENTION_CONFIG)
        self._check_layer_types()
        super().__post_init__(**kwargs)

    @staticmethod
    def _parse_layer_types(text: str) -> list[str]:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"layer_types must be a list (or a string holding one), got {text!r}") from error
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"layer_types must be a list (or a string holding one), got {text!r}")
        return list(value)

    def _check_layer_types(self) -> None:
        layer_types = self.layer_types
        if not isinstance(layer_types, list):
            raise ValueError(f"layer_types must be a list of {list(LAYER_TYPES)}, got {layer_types!r}")
        if len(layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(layer_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}; expected {self.num_hidden_layers} entries "
                f"from {list(LAYER_TYPES)}"
            )
        for index, layer_type in enumerate(layer_types):
            if layer_type not in LAYER_TYPES:
                raise ValueError(
                    f"layer_types[{index}] is {layer_type!r}; expected one of {list(LAYER_TYPES)}"
                )
        if not isinstance(self.efficient_attention_config, dict):
            raise ValueError(
                f"efficient_attention_config must be a dict with 'jet' / 'swa' entries, "
                f"got {self.efficient_attention_config!r}"
            )
        if "jet" in layer_types:
            self.jet_block_config()  # validates
        if "swa" in layer_types:
            self.swa_window_size()  # validates

    def validate_layer_type(self):
        """Replaces transformers' check (which only knows its own layer type names)."""
        self._check_layer_types()

    def jet_block_config(self) -> dict[str, Any]:
        """The ``efficient_attention_config["jet"]`` entry with upstream's defaults filled in, validated."""
        where = "efficient_attention_config['jet']"
        entry = self.efficient_attention_config.get("jet")
        if not isinstance(entry, dict):
            raise ValueError(
                f"{where} must be a dict of JetBlock settings (layer_types has 'jet'), got {entry!r}"
            )
        unknown = sorted(set(entry) - set(JET_BLOCK_DEFAULTS))
        if unknown:
            raise ValueError(
                f"{where} has unknown keys {unknown}; expected keys from {sorted(JET_BLOCK_DEFAULTS)}"
            )
        resolved = {**JET_BLOCK_DEFAULTS, **entry}
        for key in ("num_heads", "head_dim", "dconv_generator_reduction"):
            if not _positive_int(resolved[key]):
                raise ValueError(f"{where}['{key}'] must be a positive int, got {resolved[key]!r}")
        if not _positive_int(resolved["conv_size"]) or resolved["conv_size"] < 2:
            raise ValueError(f"{where}['conv_size'] must be an int >= 2, got {resolved['conv_size']!r}")
        try:
            norm_eps = float(resolved["norm_eps"])
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{where}['norm_eps'] must be a number (or a numeric string), got {resolved['norm_eps']!r}"
            ) from error
        if not norm_eps > 0:
            raise ValueError(f"{where}['norm_eps'] must be > 0, got {resolved['norm_eps']!r}")
        try:
            expand_v = float(resolved["expand_v"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}['expand_v'] must be a number, got {resolved['expand_v']!r}") from error
        head_v_dim = expand_v * resolved["head_dim"]
        if not (head_v_dim >= 1 and math.isclose(head_v_dim, round(head_v_dim), rel_tol=1e-5)):
            raise ValueError(
                f"{where}['expand_v'] times head_dim must be a positive integer (the value size per "
                f"head), got {resolved['expand_v']!r} * {resolved['head_dim']} = {head_v_dim}"
            )
        if resolved["mode"] not in ("chunk", "fused_recurrent"):
            raise ValueError(
                f"{where}['mode'] must be 'chunk' or 'fused_recurrent', got {resolved['mode']!r}"
            )
        return resolved

    def swa_window_size(self) -> int:
        """``efficient_attention_config["swa"]["window_size"]``, validated."""
        entry = self.efficient_attention_config.get("swa")
        window = entry.get("window_size") if isinstance(entry, dict) else None
        if not _positive_int(window):
            raise ValueError(
                "efficient_attention_config['swa']['window_size'] must be a positive int "
                f"(layer_types has 'swa'), got {window!r}"
            )
        return window


# --------------------------------------------------------------------------------------------- cache


class JetStateCacheLayer:
    """The cache slot of a ``jet`` layer: one :class:`FastWeightState` for the batch, plus the number of
    tokens it has consumed (so the cache can report a sequence length without attention layers).

    It is not a transformers ``CacheLayerMixin`` (there are no keys/values); it implements the
    methods ``Cache`` and ``generate()`` call on every layer.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self) -> None:
        self.state: FastWeightState | None = None
        self.seen_tokens = 0

    def __repr__(self) -> str:
        shapes = None if self.state is None else self.state.shapes()
        return f"JetStateCacheLayer(seen_tokens={self.seen_tokens}, shapes={shapes})"

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    def update(self, state: FastWeightState, num_tokens: int) -> None:
        self.state = state
        self.seen_tokens += int(num_tokens)

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.state = None
        self.seen_tokens = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(beam_idx.to(self.state.recurrent.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(torch.as_tensor(indices, device=self.state.recurrent.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            index = torch.arange(self.state.batch_size, device=self.state.recurrent.device)
            self.state = self.state.index_select(index.repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError(
                "a Jet-Nemotron cache cannot be cropped: a JetBlock's recurrent state cannot forget tokens"
            )

    def offload(self) -> None:
        """Fast-weight states are small; they stay on their device."""

    def prefetch(self) -> None:
        """Nothing is offloaded, so nothing to fetch."""


class JetNemotronCache(Cache):
    """Per-layer cache of a Jet-Nemotron model, built from its config.

    ``attn`` layers: a transformers ``DynamicLayer`` (post-RoPE keys/values of every token);
    ``swa`` layers: a ``DynamicSlidingWindowLayer`` keeping the last ``window_size - 1`` tokens;
    ``jet`` layers: a :class:`JetStateCacheLayer` holding the layer's :class:`FastWeightState`.
    Works with ``generate()`` (greedy, sampling, beam search: ``reorder_cache`` reorders every kind).
    """

    def __init__(self, config: JetNemotronConfig) -> None:
        layers: list[Any] = []
        for layer_type in config.layer_types:
            if layer_type == "attn":
                layers.append(DynamicLayer())
            elif layer_type == "swa":
                layers.append(DynamicSlidingWindowLayer(sliding_window=config.swa_window_size()))
            else:
                layers.append(JetStateCacheLayer())
        super().__init__(layers=layers)
        self.layer_types = list(config.layer_types)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen so far (padding included), by any layer kind."""
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].get_seq_length()

    @property
    def is_linear(self) -> list[bool]:
        return [isinstance(layer, JetStateCacheLayer) for layer in self.layers]

    def get_jet_state(self, layer_idx: int) -> FastWeightState | None:
        """The state of jet layer ``layer_idx`` (None before its first update)."""
        layer = self.layers[layer_idx]
        if not isinstance(layer, JetStateCacheLayer):
            raise ValueError(f"cache layer {layer_idx} is a {self.layer_types[layer_idx]!r} layer, not 'jet'")
        return layer.state

    def update_jet_state(self, state: FastWeightState, layer_idx: int, num_tokens: int) -> None:
        """Store the state of jet layer ``layer_idx`` after it consumed ``num_tokens`` more tokens."""
        layer = self.layers[layer_idx]
        if not isinstance(layer, JetStateCacheLayer):
            raise ValueError(f"cache layer {layer_idx} is a {self.layer_types[layer_idx]!r} layer, not 'jet'")
        layer.update(state, num_tokens)


# --------------------------------------------------------------------------------------------- modules


class JetNemotronDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm residual layer: ``h + mixer(input_layernorm(h))``, then
    ``h + mlp(post_attention_layernorm(h))``.

    The mixer (``self_attn``) is a :class:`SelfAttention` (``attn`` / ``swa``) or a :class:`JetBlock`.
    """

    def __init__(self, config: JetNemotronConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        if self.layer_type == "jet":
            jet = config.jet_block_config()
            self.self_attn = JetBlock(
                hidden_size=config.hidden_size,
                num_heads=jet["num_heads"],
                head_dim=jet["head_dim"],
                expand_v=float(jet["expand_v"]),
                conv_size=jet["conv_size"],
                generator_reduction=jet["dconv_generator_reduction"],
                norm_eps=float(jet["norm_eps"]),
                initializer_range=config.initializer_range,
                layer_idx=layer_idx,
                mode=jet["mode"],
            )
        else:
            window = config.swa_window_size() if self.layer_type == "swa" else None
            self.self_attn = SelfAttention(config, layer_idx, qkv_bias=True, sliding_window=window)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        cache: JetNemotronCache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """[B, T, hidden] -> [B, T, hidden].

        Args:
            position_embeddings: RoPE ``(cos, sin)`` for the T positions (attention layers).
            attention_mask: the prepared attention mask of this layer's kind (attention layers).
            padding_mask: [B, T] 1/0 mask of the current tokens, or None (jet layers).
            cache: the model's cache; a jet layer reads and replaces its FastWeightState there.
        """
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        if self.layer_type == "jet":
            state = cache.get_jet_state(self.layer_idx) if cache is not None else None
            hidden_states, new_state = self.self_attn(hidden_states, state=state, attention_mask=padding_mask)
            if cache is not None:
                cache.update_jet_state(new_state, self.layer_idx, num_tokens=hidden_states.shape[1])
        else:
            hidden_states, _ = self.self_attn(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                cache=cache,
                **kwargs,
            )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


class JetNemotronPreTrainedModel(NativePreTrainedModel):
    # Explicit: with `from __future__ import annotations` a `config: ...` annotation is a string.
    config_class = JetNemotronConfig
    _no_split_modules = ["JetNemotronDecoderLayer"]
    # Flash/flex attention are untested with the sliding-window cache and the padding handling here.
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = False  # the fast-weight state is Python-side bookkeeping

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults (normal(initializer_range) linears and embeddings, zero biases, unit
        norms), then upstream's JetBlock init (A_log, dt_bias, static conv kernel, zero generator)."""
        super()._init_weights(module)
        if isinstance(module, JetBlock):
            module.init_parameters(std=self.config.initializer_range)


class JetNemotronModel(JetNemotronPreTrainedModel):
    """Embeddings, the decoder layers and the final norm."""

    def __init__(self, config: JetNemotronConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [JetNemotronDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def make_cache(self) -> JetNemotronCache:
        """An empty cache for this model's layer layout."""
        return JetNemotronCache(self.config)

    def _first_layer(self, layer_type: str) -> int | None:
        types = self.config.layer_types
        return types.index(layer_type) if layer_type in types else None

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: JetNemotronCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: JetNemotronCache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Run the decoder.

        Args:
            input_ids: [B, T] token ids (or ``inputs_embeds`` [B, T, hidden]; exactly one of them).
            attention_mask: [B, past + T] with 1 for real tokens and 0 for padding (any position, e.g.
                left padding), or None when nothing is padded. Padded tokens change no state and no
                other token's output.
            position_ids: [B, T]; default: the count of real tokens before each token (so a left-padded
                row gets the same positions as the unpadded sequence), or past + 0..T-1 without a mask.
            cache: a :class:`JetNemotronCache` (``past_key_values`` is an alias); created when
                ``use_cache`` and none is given. Any transformers Cache that also provides
                ``get_jet_state(layer_idx)`` / ``update_jet_state(state, layer_idx, num_tokens)`` works.
            use_cache: default ``config.use_cache``.
            output_hidden_states: also return the embeddings, the output of every layer but the last,
                and the final normed output (L + 1 tensors, transformers' convention).
        """
        if cache is None:
            cache = past_key_values
        inputs_embeds, use_cache, output_hidden_states = prepare_decoder_inputs(
            self, input_ids, inputs_embeds, use_cache, output_hidden_states, kwargs
        )
        batch_size, seq_len = inputs_embeds.shape[:2]

        if not use_cache:
            cache = None
        elif cache is None:
            cache = self.make_cache()
        elif not (hasattr(cache, "get_jet_state") and hasattr(cache, "update_jet_state")):
            raise ValueError(
                f"cache must be a JetNemotronCache (model.model.make_cache()), got {type(cache).__name__}: "
                "jet layers keep a fast-weight state that other caches cannot hold"
            )
        past_seen = cache.get_seq_length() if cache is not None else 0

        padding_mask = None
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
                raise ValueError(
                    "attention_mask must be a 2D padding mask [B, past + T] (1 = token, 0 = padding); "
                    f"got {type(attention_mask).__name__}"
                    + (
                        f" of shape {list(attention_mask.shape)}"
                        if isinstance(attention_mask, torch.Tensor)
                        else ""
                    )
                )
            if tuple(attention_mask.shape) != (batch_size, past_seen + seq_len):
                raise ValueError(
                    f"attention_mask must have shape [B, past + T] = [{batch_size}, {past_seen + seq_len}] "
                    f"(past = {past_seen} cached tokens), got {list(attention_mask.shape)}"
                )
            attention_mask = attention_mask.to(inputs_embeds.device)
            if bool((attention_mask != 0).all()):
                attention_mask = None  # nothing padded: the unmasked fast paths are exact
            else:
                padding_mask = attention_mask[:, -seq_len:]

        if position_ids is None:
            position_ids = default_position_ids(inputs_embeds, past_seen, attention_mask)

        attn_idx, swa_idx = self._first_layer("attn"), self._first_layer("swa")
        masks: dict[str, torch.Tensor | None] = {}
        position_embeddings = None
        if attn_idx is not None or swa_idx is not None:
            built = build_attention_masks(
                self.config,
                inputs_embeds,
                attention_mask,
                cache,
                position_ids,
                sliding_window=self.config.swa_window_size() if swa_idx is not None else None,
                full_cache_layer_idx=attn_idx if attn_idx is not None else swa_idx,
                sliding_cache_layer_idx=swa_idx,
            )
            masks = {"attn": built["full_attention"], "swa": built.get("sliding_attention")}
            position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds
        all_hidden_states: list[torch.Tensor] | None = [] if output_hidden_states else None
        for decoder_layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states = decoder_layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=masks.get(decoder_layer.layer_type),
                padding_mask=padding_mask,
                cache=cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)

        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
        )


class JetNemotronForCausalLM(CausalLMHeadMixin, JetNemotronPreTrainedModel, GenerationMixin):
    """Jet-Nemotron with its (tied) language-model head; works with ``generate()``."""

    def __init__(self, config: JetNemotronConfig) -> None:
        super().__init__(config)
        self.model = JetNemotronModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs) -> None:
        """generate() would build a DynamicCache from ``config.layer_types``, which cannot hold the jet
        layers' states: give it a JetNemotronCache instead."""
        user_cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
        if user_cache is not None:
            if not hasattr(user_cache, "get_jet_state"):
                raise ValueError(f"cache must be a JetNemotronCache, got {type(user_cache).__name__}")
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if generation_config.use_cache is False:
            return None
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported by "
                "Jet-Nemotron; leave it unset (a JetNemotronCache is used)"
            )
        model_kwargs["cache"] = self.model.make_cache()
        return None

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: JetNemotronCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        past_key_values: JetNemotronCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (and with ``labels`` the shifted causal-LM loss; -100 labels are ignored).

        Args: as :meth:`JetNemotronModel.forward`, plus ``labels`` [B, T] and ``logits_to_keep`` (keep the
        last N positions when an int > 0, or these positions when a 1D tensor).
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(hidden_states[:, self.kept_positions(logits_to_keep, hidden_states.device)])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
        )

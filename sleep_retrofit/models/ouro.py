"""Ouro (ByteDance "looped language model"), native and checkpoint-compatible.

Ouro is a Qwen2-style decoder whose whole layer stack is applied ``total_ut_steps`` times with
shared weights ("universal transformer" steps); ``model.norm`` runs after every step and its output
is the next step's input. An early-exit gate scores each step's output; the resulting exit
distribution over steps picks (or mixes) the step whose hidden state goes to ``lm_head``.

Same config fields, state-dict keys and numerics as the public remote code, without its
``trust_remote_code`` requirement or its transformers < 4.56 pin. Differences, all on paths that
upstream leaves undefined or that are explicit opt-ins, are listed in docs/models.md.

Layer with sandwich norms (no biases anywhere except the gate)::

    h = h + input_layernorm_2(self_attn(input_layernorm(h)))
    h = h + post_attention_layernorm_2(mlp(post_attention_layernorm(h)))

Exit distribution over steps t = 0..S-1 (per token)::

    lambda_t = sigmoid(early_exit_gate(h_t))
    p_t = lambda_t * prod_{j<t} (1 - lambda_j)      for t < S-1
    p_{S-1} = prod_{j<S-1} (1 - lambda_j)            (the remaining mass)

KV cache: each (step, layer) pair has its own slot, ``slot = step * num_hidden_layers + layer``,
so a step only ever attends to keys/values written by the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

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
    "OuroCache",
    "OuroCausalLMOutput",
    "OuroConfig",
    "OuroDecoderLayer",
    "OuroForCausalLM",
    "OuroModel",
    "OuroModelOutput",
    "OuroPreTrainedModel",
    "exit_distribution",
    "threshold_exit_steps",
]


# --------------------------------------------------------------------------------------------- config


class OuroConfig(PreTrainedConfig):
    r"""Configuration of an Ouro model (``model_type="ouro"``).

    Qwen2 fields plus the loop: ``total_ut_steps`` (how many times the shared layer stack runs) and
    the default inference exit, ``early_exit_threshold`` (cumulative exit probability; 1.0 selects
    the last step) and optionally ``early_exit_step`` (a fixed step; real configs lack it, so it is
    read with a None fallback). ``pad_token_id`` defaults to 0 (``<|endoftext|>``) because the
    released configs do not set it. Legacy ``rope_theta`` / ``rope_scaling`` keys in a config.json
    are folded into ``rope_parameters`` by transformers.

    Ouro-1.4B: 24 layers, hidden 2048, 16 heads / 16 KV heads, intermediate 5632, vocab 49152,
    rope_theta 1e6. Ouro-2.6B: the same with 48 layers.
    """

    model_type = "ouro"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 49152
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None  # None: same as num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 65536
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    layer_types: list[str] | None = None
    attention_dropout: float | int = 0.0
    total_ut_steps: int = 4
    early_exit_threshold: float | None = 1.0
    early_exit_step: int | None = None
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        # Upstream semantics: the window only exists when use_sliding_window is set.
        self.sliding_window = self.sliding_window if self.use_sliding_window else None
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = [
                "sliding_attention"
                if self.sliding_window is not None and i >= self.max_window_layers
                else "full_attention"
                for i in range(self.num_hidden_layers)
            ]
        if int(self.total_ut_steps) < 1:
            raise ValueError(f"total_ut_steps must be >= 1, got {self.total_ut_steps}")
        super().__post_init__(**kwargs)


# --------------------------------------------------------------------------------------------- exits


def exit_distribution(gate_logits: torch.Tensor) -> torch.Tensor:
    """Exit probability of every step from the gate logits.

    Args:
        gate_logits: [S, B, T], pre-sigmoid ``early_exit_gate`` outputs of the S steps.

    Returns:
        [B, T, S]: ``p_t = lambda_t * prod_{j<t}(1 - lambda_j)``, the last step taking the remaining mass
        (so each row sums to 1). Computed with upstream's running product, in the gate's dtype.
    """
    steps = gate_logits.shape[0]
    remaining = torch.ones_like(gate_logits[0])
    pdf = []
    for step in range(steps):
        exit_prob = torch.sigmoid(gate_logits[step])
        if step < steps - 1:
            pdf.append(exit_prob * remaining)
            remaining = remaining * (1.0 - exit_prob)
        else:
            pdf.append(remaining)
    return torch.stack(pdf, dim=-1)


def threshold_exit_steps(exit_pdf: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Per token, the first step whose cumulative exit probability reaches ``threshold``, else the last.

    Args:
        exit_pdf: [B, T, S] from :func:`exit_distribution`.
        threshold: a float (or a tensor broadcastable to [B, T, S]).

    Returns:
        [B, T] int64 step indices.
    """
    reached = torch.cumsum(exit_pdf, dim=-1) >= threshold
    first = reached.float().argmax(dim=-1)  # first True; 0 when none, fixed below
    last = torch.full_like(first, exit_pdf.shape[-1] - 1)
    return torch.where(reached.any(dim=-1), first, last)


# --------------------------------------------------------------------------------------------- cache


def _cache_layer(config: OuroConfig, layer: int) -> DynamicLayer:
    if config.layer_types[layer] == "sliding_attention":
        return DynamicSlidingWindowLayer(sliding_window=config.sliding_window)
    return DynamicLayer()


class OuroCache(DynamicCache):
    """A DynamicCache with one slot per (step, layer): ``slot = step * num_hidden_layers + layer``.

    ``total_ut_steps * num_hidden_layers`` slots; sliding-window layers keep only their window.
    """

    def __init__(self, config: OuroConfig) -> None:
        layers = [
            _cache_layer(config, layer)
            for _step in range(config.total_ut_steps)
            for layer in range(config.num_hidden_layers)
        ]
        Cache.__init__(self, layers=layers)


def _ensure_cache_slots(cache: Cache, config: OuroConfig) -> None:
    """Give a fixed-size cache (e.g. ``DynamicCache(config=...)``, which generate() builds with one slot
    per layer) the extra slots of steps 1..S-1, as long as it is still empty."""
    needed = config.total_ut_steps * config.num_hidden_layers
    if getattr(cache, "layer_class_to_replicate", None) is not None or len(cache.layers) >= needed:
        return
    if cache.get_seq_length() > 0:
        raise ValueError(
            f"cache has {len(cache.layers)} layer slots but Ouro needs total_ut_steps * num_hidden_layers = "
            f"{needed} (one per step and layer); pass an empty cache or OuroCache(config)"
        )
    for slot in range(len(cache.layers), needed):
        cache.layers.append(_cache_layer(config, slot % config.num_hidden_layers))


# --------------------------------------------------------------------------------------------- outputs


@dataclass
class OuroModelOutput(BaseModelOutputWithPast):
    """OuroModel output. ``last_hidden_state`` is the normed output of the last step.

    ut_hidden_states: S tensors [B, T, hidden], the ``model.norm`` output after each step.
    ut_gate_logits: [S, B, T], pre-sigmoid ``early_exit_gate`` of each step's output.
    hidden_states (``output_hidden_states=True``): the embeddings followed by the output of every
        decoder-layer call, in execution order (index ``1 + step * num_hidden_layers + layer``), before
        the per-step norm.
    """

    ut_hidden_states: tuple[torch.Tensor, ...] | None = None
    ut_gate_logits: torch.Tensor | None = None


@dataclass
class OuroCausalLMOutput(CausalLMOutputWithPast):
    """OuroForCausalLM output: the standard fields plus the per-step results.

    ut_hidden_states: S tensors [B, T, hidden] (normed output of each step).
    ut_gate_logits: [S, B, T] pre-sigmoid exit-gate values.
    exit_pdf: [B, T, S] exit probability of each step (rows sum to 1).
    exit_steps: [B, T] the step each token's ``logits`` come from; None for a weighted exit or the loss
        (mixtures of all steps).
    ut_logits: [S, B, T', V] logits of every step (only with ``return_ut_logits=True``; T' follows
        ``logits_to_keep``).
    """

    ut_hidden_states: tuple[torch.Tensor, ...] | None = None
    ut_gate_logits: torch.Tensor | None = None
    exit_pdf: torch.Tensor | None = None
    exit_steps: torch.Tensor | None = None
    ut_logits: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------- modules


class OuroDecoderLayer(GradientCheckpointingLayer):
    """One shared layer: attention and MLP, each wrapped in a pre-norm and a post-norm (sandwich)."""

    def __init__(self, config: OuroConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attention_type = config.layer_types[layer_idx]
        sliding_window = config.sliding_window if self.attention_type == "sliding_attention" else None
        self.self_attn = SelfAttention(config, layer_idx, qkv_bias=False, sliding_window=sliding_window)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.input_layernorm_2 = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm_2 = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        cache_layer_idx: int | None = None,
        use_cache: bool | None = False,
        **kwargs,
    ) -> torch.Tensor:
        """[B, T, hidden] -> [B, T, hidden]; ``cache_layer_idx`` is this call's (step, layer) slot."""
        attn_out, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            cache_layer_idx=cache_layer_idx,
            **kwargs,
        )
        hidden_states = hidden_states + self.input_layernorm_2(attn_out)
        mlp_out = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.post_attention_layernorm_2(mlp_out)


class OuroPreTrainedModel(NativePreTrainedModel):
    # Explicit: with `from __future__ import annotations` a `config: OuroConfig` annotation is a string.
    config_class = OuroConfig
    _no_split_modules = ["OuroDecoderLayer"]
    _supports_flash_attn = True
    _supports_flex_attn = True
    _can_compile_fullgraph = False  # the step loop and per-step outputs are plain Python


class OuroModel(OuroPreTrainedModel):
    """Embeddings, the shared layer stack run ``total_ut_steps`` times, the per-step norm and exit gate."""

    def __init__(self, config: OuroConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([OuroDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config=config)
        self.early_exit_gate = nn.Linear(config.hidden_size, 1)
        self.gradient_checkpointing = False
        self.post_init()

    @property
    def total_ut_steps(self) -> int:
        return int(self.config.total_ut_steps)

    def make_cache(self) -> OuroCache:
        """An empty cache with one slot per (step, layer)."""
        return OuroCache(self.config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> OuroModelOutput:
        """Run all steps.

        Args:
            input_ids: [B, T] token ids (or ``inputs_embeds`` [B, T, hidden], exactly one of them).
            attention_mask: [B, past + T] with 1 for real tokens and 0 for padding, or a prepared mask.
            position_ids: [B, T]; default: past length + 0..T-1.
            cache: an :class:`OuroCache` (or any empty transformers Cache, which is given the slots it
                needs); created when ``use_cache`` and none is given. ``past_key_values`` is an alias.
            use_cache: default ``config.use_cache``.
            output_hidden_states: also return the output of every layer call (see OuroModelOutput).
        """
        if cache is None:
            cache = past_key_values
        inputs_embeds, use_cache, output_hidden_states = prepare_decoder_inputs(
            self, input_ids, inputs_embeds, use_cache, output_hidden_states, kwargs
        )

        if use_cache:
            if cache is None:
                cache = self.make_cache()
            else:
                _ensure_cache_slots(cache, self.config)
        else:
            cache = None

        if position_ids is None:  # counting padded positions too, as upstream does
            position_ids = default_position_ids(
                inputs_embeds, cache.get_seq_length() if cache is not None else 0
            )

        masks = build_attention_masks(
            self.config,
            inputs_embeds,
            attention_mask,
            cache,
            position_ids,
            sliding_window=self.config.sliding_window
            if "sliding_attention" in self.config.layer_types
            else None,
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        num_layers = self.config.num_hidden_layers
        hidden_states = inputs_embeds
        layer_outputs: list[torch.Tensor] | None = [inputs_embeds] if output_hidden_states else None
        ut_hidden_states: list[torch.Tensor] = []
        ut_gate_logits: list[torch.Tensor] = []
        for step in range(self.total_ut_steps):
            for layer_idx, decoder_layer in enumerate(self.layers):
                hidden_states = decoder_layer(
                    hidden_states,
                    position_embeddings=position_embeddings,
                    attention_mask=masks[decoder_layer.attention_type],
                    cache=cache,
                    cache_layer_idx=step * num_layers + layer_idx,
                    use_cache=use_cache,
                    **kwargs,
                )
                if layer_outputs is not None:
                    layer_outputs.append(hidden_states)
            # The normed output is both this step's result and the next step's input.
            hidden_states = self.norm(hidden_states)
            ut_hidden_states.append(hidden_states)
            ut_gate_logits.append(self.early_exit_gate(hidden_states).squeeze(-1))

        return OuroModelOutput(
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=tuple(layer_outputs) if layer_outputs is not None else None,
            ut_hidden_states=tuple(ut_hidden_states),
            ut_gate_logits=torch.stack(ut_gate_logits, dim=0),
        )


class OuroForCausalLM(CausalLMHeadMixin, OuroPreTrainedModel, GenerationMixin):
    """Ouro with its language-model head and exit selection.

    Which step's logits are returned, in priority order:

    1. ``labels`` given: the expected logits ``sum_t p_t * lm_head(h_t)`` (and the loss on them);
    2. ``exit_at_step=s`` (forward kwarg): step s for every token;
    3. ``exit_threshold=x`` (forward kwarg): per token, the first step with cumulative exit
       probability >= x, else the last step;
    4. ``use_weighted_exit=True`` (forward kwarg): the expected logits;
    5. the defaults ``self.early_exit_step`` then ``self.early_exit_threshold`` (from the config;
       ``early_exit_threshold=1.0``, the released default, selects the last step);
    6. the last step.

    All steps are always computed; the per-step results are on the output (OuroCausalLMOutput).
    """

    def __init__(self, config: OuroConfig) -> None:
        super().__init__(config)
        self.model = OuroModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Per-instance defaults (as upstream), so a user can change them without editing the config.
        self.early_exit_step: int | None = getattr(config, "early_exit_step", None)
        self.early_exit_threshold: float | None = getattr(config, "early_exit_threshold", None)
        self.post_init()

    def _check_step(self, name: str, step: int) -> int:
        steps = self.model.total_ut_steps
        if not -steps <= int(step) < steps:
            raise ValueError(
                f"{name} must be a step index in [0, {steps - 1}] (total_ut_steps={steps}), got {step}"
            )
        return int(step) % steps

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        exit_at_step: int | None = None,
        exit_threshold: float | None = None,
        use_weighted_exit: bool = False,
        return_ut_logits: bool = False,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> OuroCausalLMOutput:
        """Logits (and loss) of one forward; see the class docstring for the exit priority.

        Args:
            input_ids / attention_mask / position_ids / cache / inputs_embeds / use_cache: as OuroModel.
            labels: [B, T] (-100 = ignored); the loss is the shifted causal-LM cross-entropy of the
                expected logits.
            logits_to_keep: keep only the last N positions (int) or these positions (1D tensor).
            exit_at_step: use this step's output for every token.
            exit_threshold: cumulative exit-probability threshold.
            use_weighted_exit: mix all steps by their exit probabilities.
            return_ut_logits: also return every step's logits as ``ut_logits`` [S, B, T', V].
        """
        outputs: OuroModelOutput = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        keep = self.kept_positions(logits_to_keep, outputs.last_hidden_state.device)
        step_hidden = [h[:, keep] for h in outputs.ut_hidden_states]  # S x [B, T', H]
        exit_pdf = exit_distribution(outputs.ut_gate_logits)  # [B, T, S]
        kept_pdf = exit_pdf[:, keep]
        num_steps = len(step_hidden)

        def expected_logits() -> torch.Tensor:
            mixed = None
            for step, hidden in enumerate(step_hidden):
                term = self.lm_head(hidden) * kept_pdf[..., step].unsqueeze(-1).to(hidden.dtype)
                mixed = term if mixed is None else mixed + term
            return mixed

        def logits_at(steps: torch.Tensor) -> torch.Tensor:
            stacked = torch.stack(step_hidden, dim=2)  # [B, T', S, H]
            index = steps[..., None, None].expand(-1, -1, 1, stacked.shape[-1])
            return self.lm_head(torch.gather(stacked, 2, index).squeeze(2))

        batch, kept_len = kept_pdf.shape[:2]
        exit_steps = None
        loss = None
        if labels is not None:
            logits = expected_logits()
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        else:
            step = exit_at_step
            threshold = exit_threshold
            weighted = use_weighted_exit
            if step is None and threshold is None and not weighted:
                step, threshold = self.early_exit_step, self.early_exit_threshold
            if step is not None:
                step = self._check_step("exit_at_step", step)
                exit_steps = torch.full((batch, kept_len), step, dtype=torch.long, device=kept_pdf.device)
                logits = self.lm_head(step_hidden[step])
            elif threshold is not None:
                exit_steps = threshold_exit_steps(kept_pdf, threshold)
                logits = logits_at(exit_steps)
            elif weighted:
                logits = expected_logits()
            else:
                exit_steps = torch.full(
                    (batch, kept_len), num_steps - 1, dtype=torch.long, device=kept_pdf.device
                )
                logits = self.lm_head(step_hidden[-1])

        ut_logits = torch.stack([self.lm_head(h) for h in step_hidden]) if return_ut_logits else None
        return OuroCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            ut_hidden_states=outputs.ut_hidden_states,
            ut_gate_logits=outputs.ut_gate_logits,
            exit_pdf=exit_pdf,
            exit_steps=exit_steps,
            ut_logits=ut_logits,
        )

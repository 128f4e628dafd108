"""SleepRetrofitConfig and SleepRetrofitForCausalLM: a base model + inserted fast-weight
blocks, run by the sleep engine, loadable with AutoModelForCausalLM.

State-dict layout: ``base.*`` is the base model exactly as its family names it (so PEFT
targets ``q_proj`` etc. as usual) and ``fast_weights.{layer}.*`` the inserted blocks.
The checkpoint directory also holds a shim module (``modeling_sleep_retrofit.py``) and an
``auto_map`` so ``trust_remote_code=True`` loading works wherever the package is installed;
after ``import sleep_retrofit`` no remote code is needed at all.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import ItemsView, Iterator, KeysView, Sequence, ValuesView
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from .models.loading import StrictLoadingMixin
from .models.registry import resolve_family
from .publish import current_umask
from .retrofit import (
    RETENTION_HORIZON_CHUNKS,
    FastWeightBlock,
    FastWeightPlan,
    build_fast_weight_blocks,
    default_plan,
)
from .sessions import SleepState, model_fingerprint
from .sleep import SleepCache, SleepEngine, SleepSettings, build_stack

SHIM_MODULE = "modeling_sleep_retrofit"
# Base-config fields mirrored at the top level of a converted config.
BASE_FIELDS = (
    "max_position_embeddings",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
)
# The attention and MLP projections of the Llama / Qwen / Mistral / Ouro / Jet-Nemotron layers.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHIM_SOURCE = '''"""Loads a sleep-retrofit checkpoint through trust_remote_code: the classes live in the
installed `sleep-retrofit` package (pip install sleep-retrofit)."""

from sleep_retrofit.modeling import SleepRetrofitConfig, SleepRetrofitForCausalLM

__all__ = ["SleepRetrofitConfig", "SleepRetrofitForCausalLM"]
'''


class SleepRetrofitConfig(PreTrainedConfig):
    """A base model's config plus the fast-weight plan and the sleep settings.

    Args:
        base_config: the base model's config (object or dict with its ``model_type``).
        fast_weights: a :class:`FastWeightPlan` as a dict (empty plan = nothing inserted).
        passes: N, consolidation passes per chunk (1 = no sleep).
        window: L, chunk length (and attention window with sliding eviction).
        eviction: "hard" or "sliding".
        loop_span: [start, end) base layers looped by sleep; None = the family default.
        tolerance: adaptive sleep (:class:`SleepSettings`); 0 = always N passes.

    ``passes``, ``window``, ``eviction`` and ``tolerance`` are top-level so that
    ``from_pretrained(dir, passes=4)`` overrides them at load time.
    """

    model_type = "sleep_retrofit"
    sub_configs = {"base_config": AutoConfig}

    def __init__(
        self,
        base_config: PreTrainedConfig | dict | None = None,
        fast_weights: dict | None = None,
        passes: int = 1,
        window: int = 2048,
        eviction: str = "hard",
        loop_span: list[int] | None = None,
        tolerance: float = 0.0,
        **kwargs,
    ) -> None:
        if isinstance(base_config, dict):
            base_config = dict(base_config)
            model_type = base_config.pop("model_type", None)
            if model_type is None:
                raise ValueError("base_config must name its model_type")
            base_config = AutoConfig.for_model(model_type, **base_config)
        self.base_config = base_config
        self.fast_weights = dict(fast_weights or {})
        self.passes, self.window, self.eviction = passes, window, eviction
        self.loop_span = list(loop_span) if loop_span is not None else None
        self.tolerance = tolerance
        if base_config is not None:
            for name in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"):
                kwargs.setdefault(name, getattr(base_config, name, None))
            # Mirrored at the top level for tools that read them there (lm-eval's max_length is
            # config.max_position_embeddings); base_config stays the source of truth.
            for name in BASE_FIELDS:
                if getattr(base_config, name, None) is not None:
                    kwargs.setdefault(name, getattr(base_config, name))
            kwargs.setdefault("tie_word_embeddings", getattr(base_config, "tie_word_embeddings", False))
        # PreTrainedConfig.__init__ sets attn_implementation (None unless given) on every sub-config.
        # from_base shares the loaded base model's config: left at None, that model's own forward
        # would lose its causal mask. Keep the implementation it was loaded with.
        base_attention = getattr(base_config, "_attn_implementation_internal", None)
        super().__init__(**kwargs)
        if base_attention is not None and "attn_implementation" not in kwargs:
            base_config._attn_implementation_internal = base_attention
        if base_config is not None:
            self.sleep_settings()  # validate now: a bad N or L fails at conversion, not mid-generation

    def sleep_settings(self, **overrides: Any) -> SleepSettings:
        """The :class:`SleepSettings` of this config, with per-call `overrides` (None = keep)."""
        settings = SleepSettings(
            passes=self.passes,
            window=self.window,
            eviction=self.eviction,
            loop_span=tuple(self.loop_span) if self.loop_span is not None else None,
            tolerance=getattr(self, "tolerance", 0.0),
        )
        return settings.replace(**overrides)

    def plan(self) -> FastWeightPlan:
        return FastWeightPlan.from_dict(self.fast_weights) if self.fast_weights else FastWeightPlan("jet", [])


class _GroupStoppingCriteria(StoppingCriteria):
    """A user's stopping criterion, run on one group of generate()'s rows as if it saw the whole
    batch it was made for (criteria such as lm-eval's keep per-row state sized to that batch and
    slice the input at its original prompt length): the group's rows in their places with their
    removed padding columns put back, every other row stood in for by a copy of the group's
    first row (which finishes when that row does); the answer is read back for the group's rows.
    Each group gets its own copy of the criterion, so no state crosses groups. The first `held`
    columns (a sleep state's placeholders) are not the caller's and are cut before it looks."""

    def __init__(
        self,
        criterion: StoppingCriteria,
        rows: torch.Tensor,
        removed: torch.Tensor,
        batch: int,
        held: int = 0,
    ):
        self.criterion = copy.deepcopy(criterion)
        self.rows, self.removed, self.held = rows, removed, held
        self.index = torch.zeros(batch, dtype=torch.long, device=rows.device)
        self.index[rows] = torch.arange(len(rows), device=rows.device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any):
        index = self.index.to(input_ids.device)
        ids = torch.cat([self.removed.to(input_ids.device), input_ids[:, self.held :]], dim=1)[index]
        if isinstance(scores, torch.Tensor):
            scores = scores[index]
        done = self.criterion(ids, scores, **kwargs)
        if isinstance(done, torch.Tensor) and done.dim() == 1 and done.shape[0] == index.shape[0]:
            return done[self.rows.to(done.device)]
        return done


class FastWeightBlocks(nn.Module):
    """The inserted blocks by base-layer index (a string, so state-dict keys are ``{layer}.*``).

    A plain Module, not ``nn.ModuleDict``: PEFT refuses to wrap containers, and
    ``modules_to_save=["fast_weights"]`` must train and save every block. The engine reads the
    blocks through ``items()``, which PEFT's wrapper hands on to its active copy.
    """

    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, block in blocks.items():
            self.add_module(name, block)

    def items(self) -> ItemsView[str, nn.Module]:
        return self._modules.items()

    def keys(self) -> KeysView[str]:
        return self._modules.keys()

    def values(self) -> ValuesView[nn.Module]:
        return self._modules.values()

    def __getitem__(self, name: str | int) -> nn.Module:
        return self._modules[str(name)]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)


class SleepRetrofitForCausalLM(StrictLoadingMixin, PreTrainedModel, GenerationMixin):
    """A causal LM that consumes context chunk by chunk and sleeps on every evicted chunk.

    ``forward`` and ``generate`` take ``passes``, ``window`` and ``eviction`` to override the
    config for one call. With ``labels`` only the positions that have a target (the next label
    is not -100) get a wake pass and logits; complete chunks without targets are consolidated
    directly, as in the paper's Algorithm 1.
    """

    config_class = SleepRetrofitConfig
    base_model_prefix = "sleep_retrofit"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _supports_attention_backend = True
    _is_stateful = True

    def __init__(self, config: SleepRetrofitConfig, base_model: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        resolve_family(config.base_config)  # clear error for an unsupported family
        # Again here: from_pretrained(dir, passes=0) sets load-time overrides after the config's
        # __init__ ran, so only the model sees them.
        config.sleep_settings()
        if base_model is None:
            base_model = AutoModelForCausalLM.from_config(config.base_config)
        else:
            for module in base_model.modules():  # already initialised (loaded): post_init must not touch it
                module._is_hf_initialized = True
        self.base = base_model
        self.fast_weights = FastWeightBlocks(build_fast_weight_blocks(config.base_config, config.plan()))
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """A converted checkpoint, full or adapter-only (sleep_retrofit.adapters: the base is
        loaded from the checkpoint's base_reference and checked by the hash of its weights)."""
        from .adapters import is_adapter_checkpoint, load_adapter_checkpoint

        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)) and is_adapter_checkpoint(
            pretrained_model_name_or_path
        ):
            config = kwargs.get("config")
            keep = {
                k: kwargs.get(k)
                for k in ("passes", "window", "eviction", "tolerance", "dtype", "torch_dtype")
            }
            return load_adapter_checkpoint(
                pretrained_model_name_or_path,
                config=config if isinstance(config, cls.config_class) else None,
                **keep,
            )
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    # ----------------------------------------------------------------- building
    @classmethod
    def from_base(
        cls,
        base_model: PreTrainedModel,
        plan: FastWeightPlan | None = None,
        settings: SleepSettings | None = None,
        retention_chunks: int | None = RETENTION_HORIZON_CHUNKS,
    ) -> SleepRetrofitForCausalLM:
        """Wrap a loaded base model (its weights are reused, not copied); `plan` defaults to
        the family's :func:`default_plan`, `settings` to :class:`SleepSettings` defaults.

        retention_chunks: the inserted blocks' decays start tuned to keep a chunk's write for
        this many further chunks at the settings' window and N
        (:meth:`FastWeightBlock.init_retention`); None keeps the layers' own (fla/Mamba2) init."""
        settings = SleepSettings() if settings is None else settings
        plan = default_plan(base_model.config, loop_span=settings.loop_span) if plan is None else plan
        config = SleepRetrofitConfig(
            base_config=base_model.config,
            fast_weights=plan.to_dict(),
            passes=settings.passes,
            window=settings.window,
            eviction=settings.eviction,
            loop_span=list(settings.loop_span) if settings.loop_span is not None else None,
        )
        model = cls(config, base_model=base_model)
        # The base's generation defaults (eos_token_id lists, sampling settings, repetition penalty):
        # an Instruct model must still stop at its chat end token after conversion.
        base_generation = getattr(base_model, "generation_config", None)
        if base_generation is not None:
            model.generation_config = copy.deepcopy(base_generation)
        if retention_chunks is not None:
            for block in model.fast_weights.values():
                block.init_retention(settings.window, settings.passes, retention_chunks)
        return model.to(dtype=next(base_model.parameters()).dtype)

    def _init_weights(self, module: nn.Module) -> None:
        # Base-model modules are initialised by the base model's own rules; inserted blocks
        # keep their constructors' init with the output projections zeroed (identity).
        if isinstance(module, FastWeightBlock):
            module.init_output_projections()

    def fast_weight_prefixes(self) -> list[str]:
        """Module-name prefixes (with the trailing dot) of the fast-weight modules, as the stack
        view finds them: the inserted blocks and the base's own (Jet-Nemotron's JetBlocks)."""
        names = {id(module): name for name, module in self.named_modules()}
        return [names[id(module)] + "." for module in self.engine().stack.fast_weight_modules()]

    def parameters_outside_sleep(self) -> list[str]:
        """Names of the parameters no sleep forward uses (Ouro's early-exit gate: under sleep
        Ouro always runs all total_ut_steps). Training them is impossible; leaving them
        trainable would make DDP wait for gradients that never come."""
        used = {id(p) for module in self.engine().stack.modules() for p in module.parameters()}
        return [name for name, p in self.named_parameters() if id(p) not in used]

    def lora_exclude_modules(self) -> str:
        """PEFT's ``LoraConfig(exclude_modules=...)`` for this model: a regular expression matching
        the fast-weight modules and everything inside them.

        PEFT matches a list of short names against every module, so ``target_modules=["q_proj",
        "v_proj"]`` alone would also put adapters on the fast-weight mixers' ``q_proj`` /
        ``v_proj`` (GatedDeltaNet, JetBlock); those blocks train fully instead, through
        ``modules_to_save``."""
        prefixes = sorted(prefix.rstrip(".") for prefix in self.fast_weight_prefixes())
        return "(" + "|".join(re.escape(prefix) for prefix in prefixes) + r")(\..*)?"

    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.base.get_output_embeddings()

    def engine(self, **overrides: Any) -> SleepEngine:
        """The engine for these settings (`passes`, `window`, `eviction`, `tolerance` overrides;
        None = keep).

        Engines are memoised per settings: generate() calls forward once per token and the
        stack view need not be rebuilt each time (it only references modules). The memo is
        checked against what the view was built from, the identity of every module (PEFT
        wrappers, a swapped decoder layer, modules_to_save=["lm_head"]) and Ouro's
        total_ut_steps, and rebuilt when any changed (one engine kept per settings)."""
        settings = self.config.sleep_settings(**overrides)
        blocks = {int(k): block for k, block in self.fast_weights.items()}
        checkpoint = self.is_activation_checkpointing
        structure = (
            tuple(map(id, self.modules())),
            getattr(self.base.config, "total_ut_steps", None),
        )
        engines = self.__dict__.setdefault("_engines", {})
        built = engines.get((settings, checkpoint))
        if built is None or built[0] != structure:
            _use_an_attention_sleep_supports(self.base.config)
            stack = build_stack(self.base, blocks, settings.loop_span)
            built = engines[(settings, checkpoint)] = (
                structure,
                SleepEngine(stack, settings, checkpoint_passes=checkpoint),
            )
        return built[1]

    # Activation checkpointing is per consolidation pass: the part that costs N times.
    # (transformers' gradient_checkpointing_enable/disable route here.)
    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs=None, every_n_layers=1, offload=False
    ):
        """Recompute each consolidation pass in backward instead of storing its activations."""
        self.__dict__["_checkpoint_passes"] = True

    def activation_checkpointing_disable(self) -> None:
        self.__dict__["_checkpoint_passes"] = False

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.__dict__.get("_checkpoint_passes", False)

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: SleepCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        passes: int | None = None,
        window: int | None = None,
        eviction: str | None = None,
        tolerance: float | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: SleepCache | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        cache_position: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        target_start: Any = None,
    ) -> CausalLMOutputWithPast | tuple:
        """Consume the tokens after what `cache` holds; return logits (and the loss).

        Args:
            attention_mask: [B, past + T] or [B, T], 1 = token, 0 = padding (left padding).
            labels: [B, T]; positions whose next label is -100 get no logits. The returned
                logits then cover only the positions with a target, in order
                (:func:`target_logits` splits them per row).
            logits_to_keep: without labels, 0 = logits at every position, k > 0 = the last k.
            passes / window / eviction / tolerance: override the config for this call.
            position_ids, cache_position: ignored; positions count consumed tokens (RoPE sees
                relative positions only, so left padding needs no shift).
            num_items_in_batch: the loss is the target tokens' summed cross-entropy divided by
                it (the HF Trainer's gradient-accumulation normalisation) instead of their mean.
            return_dict: False returns ``output.to_tuple()``.
            loss_mask / target_start: the task rows' SleepCollator fields, accepted and ignored
                (``labels`` carries the targets) so that the HF Trainer's default
                ``remove_unused_columns=True`` keeps them for the collator.
            output_attentions / output_hidden_states: not supported (the layers run chunk by
                chunk and pass by pass; there is no single attention map or hidden state per
                layer); True raises ValueError.
        An unknown keyword (a typo such as ``pases=4``) raises TypeError instead of running with
        the defaults.
        """
        for name, value in (
            ("output_attentions", output_attentions),
            ("output_hidden_states", output_hidden_states),
        ):
            if value:
                raise ValueError(
                    f"{name}=True is not supported by sleep-retrofit models: the layers run chunk by "
                    "chunk and pass by pass, so there is no single per-layer tensor to return"
                )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, SleepCache):
            raise ValueError(f"cache must be a SleepCache, got {type(cache).__name__}")
        engine = self.engine(passes=passes, window=window, eviction=eviction, tolerance=tolerance)
        inputs = input_ids if input_ids is not None else inputs_embeds  # ids are embedded per chunk
        length = inputs.shape[1]
        if length == 0:
            held = f" (the cache has consumed {cache.seen_tokens} tokens)" if cache is not None else ""
            raise ValueError(
                f"no new tokens to consume{held}. To continue generating with a cache, pass the whole "
                "sequence so far (prompt + generated tokens) as input_ids, as transformers expects: "
                "generate() feeds only the tokens after what the cache holds"
            )
        if attention_mask is not None:
            past = cache.seen_tokens if cache is not None else 0
            if attention_mask.shape[-1] not in (length, past + length):
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[-1]} columns, but this call consumes {length} "
                    f"tokens after the {past} the cache holds: give a mask of {length} or {past + length} "
                    "columns (continuing generation: the mask of the whole sequence so far)"
                )
        padding = attention_mask[:, -length:] if attention_mask is not None else None

        wanted = torch.zeros(length, dtype=torch.bool, device=inputs.device)
        if labels is not None:
            targets = labels[:, 1:] != -100
            if not bool(targets.any()):
                raise ValueError(
                    "labels has no target (every label after the first position is -100), so there is "
                    "nothing to train on. With the HF Trainer and SleepCollator, keep the dataset's "
                    "loss_mask / target_start columns (they reach the collator only if the Trainer does "
                    "not drop them) and check the rows' loss_mask"
                )
            wanted[:-1] = targets.any(dim=0)
        elif isinstance(logits_to_keep, int):
            wanted[-logits_to_keep if logits_to_keep > 0 else 0 :] = True
        else:
            wanted[logits_to_keep] = True

        if cache is None:
            cache = engine.new_cache()
        with _ingestion_bar(length, engine.settings.window) as bar:
            hidden = engine.forward(
                inputs, cache, padding_mask=padding, output_positions=wanted, on_segment=bar.update
            )
        logits = engine.stack.head(hidden)

        loss = None
        if labels is not None:
            next_labels = labels[:, 1:][:, wanted[:-1]]
            loss = nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                next_labels.reshape(-1),
                ignore_index=-100,
                reduction="mean" if num_items_in_batch is None else "sum",
            )
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=cache if (use_cache or use_cache is None) else None
        )
        return output if return_dict is None or return_dict else output.to_tuple()

    # ----------------------------------------------------------------- generation
    def ingest(
        self,
        document: torch.Tensor | str | Sequence[int],
        *,
        passes: int | None = None,
        window: int | None = None,
        eviction: str | None = None,
        tolerance: float | None = None,
        tokenizer: Any = None,
    ) -> SleepState:
        """Read a document with sleep and return what it leaves: a :class:`SleepState` (the
        consolidated fast-weight states, the window's keys/values, the position) that
        ``generate(question_ids, sleep_state=state)`` answers from, any number of times.

        document: token ids ([T] or [B, T], B documents without padding) or text (tokenized with
            `tokenizer`, default the one saved beside the model).
        passes / window / eviction / tolerance: override the config (None = keep); with a
            tolerance, ``state.cache.stats["passes_per_chunk"]`` says how many passes each chunk took.
        """
        if isinstance(document, str):
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            document = tokenizer(document, return_tensors="pt").input_ids
        ids = torch.as_tensor(document, dtype=torch.long, device=self.device)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(
                f"ingest takes a non-empty [T] or [B, T] of token ids, got shape {list(ids.shape)}"
            )
        vocab = self.get_input_embeddings().num_embeddings
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(
                f"token ids must be in [0, {vocab}) for this model, got {int(ids.min())}..{int(ids.max())}"
            )
        settings = self.config.sleep_settings(
            passes=passes, window=window, eviction=eviction, tolerance=tolerance
        )
        cache = SleepCache()
        with torch.no_grad():
            self(
                input_ids=ids,
                cache=cache,
                logits_to_keep=1,
                passes=settings.passes,
                window=settings.window,
                eviction=settings.eviction,
                tolerance=settings.tolerance,
            )
        return SleepState(
            cache,
            settings.passes,
            settings.window,
            settings.eviction,
            model_fingerprint(self),
            settings.tolerance,
        )

    def generate(self, inputs: torch.Tensor | None = None, generation_config: Any = None, **kwargs: Any):
        """transformers' generate(), with every row chunked as it would be alone, optionally
        continuing a document read by :meth:`ingest` (``sleep_state=state``).

        Chunks are cut at multiples of L from column 0, so a left-padded row (a tokenizer's
        ``padding=True``) whose padding is not a multiple of L would be cut at other boundaries
        than its prompt alone. Rows are therefore generated in groups of equal padding modulo L,
        each group with that many all-padding columns removed (the rest of its padding is whole
        chunks, which change nothing), and the groups' sequences are put back in the input's row
        order and columns: left padding as given, finished rows right-padded with the pad token
        (as transformers pads rows that stop early). A batch whose rows need several groups
        returns sequences only (``return_dict_in_generate`` is refused); one group keeps the
        whole output.

        With ``sleep_state``, each row continues its own copy of the state (a state of one
        document serves a whole batch of questions; the state itself is never changed), the
        returned sequences hold the question and its answer (not the document), and the state's
        window and eviction apply (its passes and tolerance too, unless given)."""
        state = kwargs.pop("sleep_state", None)
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        if state is not None:
            return self._generate_from_state(state, ids, generation_config, kwargs)
        mask = kwargs.get("attention_mask")
        resumed = kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None
        if (
            not isinstance(ids, torch.Tensor)
            or ids.is_floating_point()
            or not isinstance(mask, torch.Tensor)
            or mask.shape != ids.shape
            or resumed
        ):
            return super().generate(inputs, generation_config, **kwargs)
        window = kwargs.get("window") or self.config.window
        shift = _left_padding(mask) % window
        if not bool(shift.any()):
            return super().generate(inputs, generation_config, **kwargs)
        kwargs.pop("input_ids", None)
        return self._generate_in_groups(ids, mask, shift, generation_config, kwargs)

    def _generate_from_state(self, state: SleepState, ids: Any, generation_config: Any, kwargs: dict):
        if not isinstance(state, SleepState):
            raise TypeError(
                f"sleep_state must be a SleepState (from model.ingest), got {type(state).__name__}"
            )
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point():
            raise ValueError("generate(sleep_state=...) needs the question as input_ids [B, T]")
        for name in ("cache", "past_key_values"):
            if kwargs.get(name) is not None:
                raise ValueError(f"pass either sleep_state or {name}, not both")
        for name in ("window", "eviction"):
            if kwargs.get(name) not in (None, getattr(state, name)):
                raise ValueError(
                    f"this sleep state was read with {name}={getattr(state, name)!r}; it cannot continue "
                    f"with {name}={kwargs[name]!r}"
                )
        state.check_model(self)
        kwargs.pop("input_ids", None)
        kwargs.update(window=state.window, eviction=state.eviction)
        kwargs.setdefault("passes", state.passes)
        kwargs.setdefault("tolerance", state.tolerance)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        return self._generate_in_groups(
            ids, mask, _left_padding(mask) % state.window, generation_config, kwargs, state
        )

    def _generate_in_groups(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        shift: torch.Tensor,
        generation_config: Any,
        kwargs: dict,
        state: SleepState | None = None,
    ):
        """generate() per group of rows of equal left padding modulo L (`shift`), merged back
        (see generate). With `state`, every group continues a copy of it: the columns the state
        already holds are given as placeholders, as transformers expects a resumed cache's
        input to start with what the cache consumed, and are cut from the output."""
        groups = {int(r): (shift == r).nonzero().flatten() for r in shift.unique().tolist()}
        config = generation_config if generation_config is not None else self.generation_config
        if len(groups) > 1 and kwargs.get("return_dict_in_generate", config.return_dict_in_generate):
            window = kwargs.get("window") or self.config.window
            raise ValueError(
                f"rows whose left padding differs modulo the window L={window} are generated in separate "
                "groups (each as it is alone), and return_dict_in_generate=True cannot merge their "
                "scores; pad every row to the same length modulo L, or generate those rows separately"
            )
        held = state.tokens if state is not None else 0
        pieces = []
        user_criteria = kwargs.get("stopping_criteria")
        for r, rows in groups.items():
            group_ids, group_mask = ids[rows, r:], mask[rows, r:]
            group_kwargs = {**kwargs}
            if state is not None:
                group_ids = torch.cat([group_ids.new_zeros(len(rows), held), group_ids], dim=1)
                group_mask = torch.cat([group_mask.new_ones(len(rows), held), group_mask], dim=1)
                group_kwargs["cache"] = state.fork(len(rows), device=ids.device)
            group_kwargs["attention_mask"] = group_mask
            # Absolute lengths count the r padding columns the group no longer has (and the
            # placeholder columns of a state, which the caller never sees).
            for name in ("max_length", "min_length"):
                if kwargs.get(name) is not None:
                    group_kwargs[name] = max(0, kwargs[name] - r + held)
            group_config = generation_config
            if generation_config is not None and generation_config.max_new_tokens is None:
                group_config = copy.deepcopy(generation_config)
                group_config.max_length = max(0, generation_config.max_length - r + held)
            if user_criteria:
                group_kwargs["stopping_criteria"] = StoppingCriteriaList(
                    _GroupStoppingCriteria(criteria, rows, ids[rows, :r], ids.shape[0], held)
                    for criteria in user_criteria
                )
            out = super().generate(group_ids, group_config, **group_kwargs)
            if held:
                if isinstance(out, torch.Tensor):
                    out = out[:, held:]
                else:
                    out.sequences = out.sequences[:, held:]
            pieces.append((r, rows, out))
        pad = _pad_token_id(config, kwargs)
        width = max(r + (o if isinstance(o, torch.Tensor) else o.sequences).shape[1] for r, _, o in pieces)
        merged = torch.full((ids.shape[0], width), pad, dtype=ids.dtype, device=ids.device)
        for r, rows, out in pieces:
            sequences = out if isinstance(out, torch.Tensor) else out.sequences
            merged[rows, r : r + sequences.shape[1]] = sequences
            merged[rows, :r] = ids[rows, :r]
        if len(pieces) == 1 and not isinstance(pieces[0][2], torch.Tensor):
            pieces[0][2].sequences = merged
            return pieces[0][2]
        return merged

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs) -> None:
        """generate() would build a DynamicCache from the config; sleep needs a SleepCache."""
        user_cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
        if user_cache is not None:
            if not isinstance(user_cache, SleepCache):
                raise ValueError(f"cache must be a SleepCache, got {type(user_cache).__name__}")
            return None
        if getattr(generation_config, "cache_implementation", None) not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported: a "
                "sleep-retrofit model generates with its own SleepCache (leave cache_implementation unset)"
            )
        if generation_config.use_cache is False:
            raise ValueError(
                "a sleep-retrofit model generates with its SleepCache; do not set use_cache=False"
            )
        model_kwargs["cache"] = SleepCache()
        return None

    # ----------------------------------------------------------------- saving
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Safetensors + config, plus the shim module and auto_map for trust_remote_code loading."""
        self.config.auto_map = {
            "AutoConfig": f"{SHIM_MODULE}.SleepRetrofitConfig",
            "AutoModelForCausalLM": f"{SHIM_MODULE}.SleepRetrofitForCausalLM",
        }
        super().save_pretrained(save_directory, *args, **kwargs)
        Path(save_directory, f"{SHIM_MODULE}.py").write_text(SHIM_SOURCE)
        # safetensors writes weights through a private temporary file (0600): give them the
        # permissions every other file of the checkpoint gets (0644 under the usual umask).
        for weights in Path(save_directory).glob("*.safetensors"):
            weights.chmod(0o666 & ~current_umask())


# The attention implementations that take the engine's masks: a 4-D additive bias that already
# encodes the chunk, the window and the padding (flash_attention_2/3 want a 2-D padding mask and
# apply the layer's own sliding window; flex_attention wants a BlockMask).
SLEEP_ATTENTION = ("eager", "sdpa")


def _use_an_attention_sleep_supports(config: PreTrainedConfig) -> None:
    """Switch a base config asking for another attention implementation to sdpa, saying so."""
    requested = getattr(config, "_attn_implementation", None)
    if requested is None or requested in SLEEP_ATTENTION:
        return
    warnings.warn(
        f"attn_implementation={requested!r} is not supported under sleep: the sleep engine builds a 4-D "
        f"additive mask per chunk (window, eviction and padding in one), which {requested} does not "
        "take; using 'sdpa' instead (load with attn_implementation='sdpa' to silence this)",
        stacklevel=3,
    )
    config._attn_implementation = "sdpa"


# A call that consumes at least this many chunks without gradients (a long prompt) shows a
# progress bar on a terminal (tqdm's auto mode: silent in logs, CI and notebooks' captured output).
PROGRESS_MIN_CHUNKS = 16


def _ingestion_bar(length: int, window: int):
    from tqdm.auto import tqdm

    show = length >= PROGRESS_MIN_CHUNKS * window and not torch.is_grad_enabled()
    return tqdm(
        total=length,
        desc="sleep: reading the prompt",
        unit="tok",
        leave=False,
        disable=None if show else True,
    )


def _left_padding(mask: torch.Tensor) -> torch.Tensor:
    """[B] the number of padding columns before each row's first real token (0 for a row with
    no real token)."""
    real = mask.bool()
    return torch.where(
        real.any(dim=1), real.to(torch.int8).argmax(dim=1), torch.zeros_like(real[:, 0], dtype=torch.long)
    )


def _pad_token_id(config: Any, kwargs: dict[str, Any]) -> int:
    """The id generate() pads finished rows with: pad_token_id, else the (first) eos id, else 0."""
    for value in (
        kwargs.get("pad_token_id"),
        config.pad_token_id,
        kwargs.get("eos_token_id"),
        config.eos_token_id,
    ):
        if isinstance(value, torch.Tensor):
            value = value.flatten()[0].item() if value.numel() else None
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def target_logits(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row of a ``forward(..., labels=labels)`` call: the logits that predict its targets
    [n, V] (float32) and the targets [n], in order.

    With labels the model returns logits only at the columns where some row's next label is a
    target (``labels[:, 1:] != -100`` in any row), in column order; this picks each row's own."""
    targets = labels[:, 1:] != -100  # [B, T-1]: column p predicts label p+1
    wanted = targets.any(dim=0)
    if logits.shape[1] != int(wanted.sum()):
        raise ValueError(
            f"logits cover {logits.shape[1]} positions, expected {int(wanted.sum())} "
            "(one per position with a target): pass the logits of forward(..., labels=labels)"
        )
    rank = torch.cumsum(wanted.long(), dim=0) - 1  # column -> index into the returned logits
    rows = []
    for row in range(labels.shape[0]):
        columns = targets[row].nonzero().squeeze(-1)
        rows.append((logits[row, rank[columns]].float(), labels[row, columns + 1]))
    return rows


@torch.no_grad()
def free_running_targets(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    choices: torch.Tensor | None = None,
    consolidation: dict[str, int] | None = None,
    **forward_kwargs: Any,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Predict every target of a ``forward(..., labels=labels)`` batch from the model's OWN
    earlier predictions (greedy decoding in the training layout), not from gold targets.

    Teacher forcing feeds gold target j back in as the input that predicts target j+1; when
    the targets are separate answers (Rule 110's labels, one per string) that leaks one answer
    into the next. Here target j is predicted with targets 0..j-1 replaced by the model's own
    choices: one forward per target position, each reusing the whole sleep layout.

    input_ids, labels [B, T] as a SleepCollator batch gives them; every row has the same number
    n of targets. choices [n, c] (optional): the token ids target j may take (argmax over those
    only, e.g. string j's two bit tokens); None: the whole vocabulary.
    consolidation: a dict whose "chunks" and "passes" counts are increased by the chunks the
    first forward consolidated and the body passes it ran on them (adaptive sleep's cost).
    Returns (predicted token ids [B, n], the teacher-forced ``target_logits`` of the first
    forward, for losses)."""
    targets = labels[:, 1:] != -100  # column p predicts the label at p+1
    counts = targets.sum(dim=1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise ValueError(
            f"free_running_targets needs the same number of targets per row, got {counts.tolist()}"
        )
    n = int(counts[0]) if counts.numel() else 0
    if choices is not None and choices.shape[0] != n:
        raise ValueError(f"choices has {choices.shape[0]} rows, the batch has {n} targets per row")
    # columns[b, j]: the input column holding target j of row b (the token it predicts is fed there)
    columns = (targets.nonzero()[:, 1] + 1).view(labels.shape[0], n)
    ids = input_ids.clone()
    predicted = torch.empty(labels.shape[0], n, dtype=torch.long, device=input_ids.device)
    first: list[tuple[torch.Tensor, torch.Tensor]] = []
    for j in range(n):
        output = model(input_ids=ids, labels=labels, **forward_kwargs)
        rows = target_logits(output.logits, labels)
        if j == 0:
            first = rows
            if consolidation is not None and output.cache is not None:
                consolidation["chunks"] += len(output.cache.stats["passes_per_chunk"])
                consolidation["passes"] += output.cache.stats["consolidation_passes"]
        logits = torch.stack([row_logits[j] for row_logits, _ in rows])  # [B, V]
        if choices is None:
            predicted[:, j] = logits.argmax(dim=-1)
        else:
            allowed = choices[j].to(logits.device)
            predicted[:, j] = allowed[logits[:, allowed].argmax(dim=-1)]
        ids.scatter_(1, columns[:, j : j + 1], predicted[:, j : j + 1])
    return predicted, first


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM resolve "sleep_retrofit" to these classes."""
    AutoConfig.register(SleepRetrofitConfig.model_type, SleepRetrofitConfig, exist_ok=True)
    AutoModelForCausalLM.register(SleepRetrofitConfig, SleepRetrofitForCausalLM, exist_ok=True)

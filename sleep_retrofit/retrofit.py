"""Injection of fast-weight blocks into a pretrained decoder.

A model without fast weights (Ouro, the Llama family) gets residual blocks inserted after some of
its decoder layers. Each block starts as the identity, so a freshly converted model reproduces the
base model's logits (design.md, "Semantics")::

    h = h + mixer(norm(h))                       # mixer output projection zero at insertion
    h = h + mlp(post_norm(h))                    # optional; mlp.down_proj zero at insertion

Where blocks go is a :class:`FastWeightPlan` (JSON-serialisable, stored in converted checkpoints):
the kind of mixer, the base layer indices after which a block is inserted, whether blocks carry an
MLP, and the mixer's settings. :func:`default_plan` gives the defaults per family (each family's
rule is its adapter's ``default_blocks``, sleep/families.py):

=============  ==========================================================================
family         default plan
=============  ==========================================================================
ouro           min(6, num_layers) Jet blocks without MLPs, evenly spaced in the shared stack
               (after layers 3, 7, 11, 15, 19, 23 of Ouro-1.4B: +8.1% parameters)
jet_nemotron   none: its own JetBlocks are the fast weights
llama family   a GDN block without MLP after every 4th layer (3, 7, 11, ...)
=============  ==========================================================================

Mixer defaults derived from ``hidden_size`` (see :func:`default_mixer_kwargs`), h = hidden_size:

* ``jet``    : head_dim = min(128, h), num_heads = max(1, h // 256), expand_v = 2, conv_size 4,
               generator_reduction 8 (less below width 4). Key size ~h/2, value size ~h: the state
               size of h // 128 heads with expand_v 1, with ~20% fewer parameters (smaller q/k).
* ``gdn``    : fla's proportions: head_dim = min(256, h), num_heads = max(1, 3h // (4 head_dim))
               (6 x 256 at h = 2048, as fla's default), expand_v = 2, short convs of width 4, gate.
* ``mamba2`` : mamba_ssm's defaults: expand 2, d_state = min(128, h), headdim = gcd(2h, 64) (64 when
               it divides the inner width), ngroups 1, d_conv 4.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .checks import is_int
from .kernels.validation import check_shape
from .layers import FastWeightState, GatedDeltaNet, JetBlock, Mamba2
from .models.common import MLP, RMSNorm
from .sleep.families import family_adapter

__all__ = [
    "FAST_WEIGHT_KINDS",
    "FastWeightBlock",
    "FastWeightPlan",
    "build_fast_weight_blocks",
    "count_parameters",
    "default_mixer_kwargs",
    "default_plan",
    "evenly_spaced_positions",
    "format_parameter_count",
    "parameter_report",
    "plan_from_every",
    "retention_time_constants",
]

# Inserted blocks start with decays that keep a chunk's write for this many further chunks of
# N passes (docs/sleep.md, "Retention at insertion").
RETENTION_HORIZON_CHUNKS = 8

# kind -> (layer class, the name of its width argument)
_MIXERS: dict[str, tuple[type[nn.Module], str]] = {
    "jet": (JetBlock, "hidden_size"),
    "gdn": (GatedDeltaNet, "hidden_size"),
    "mamba2": (Mamba2, "d_model"),
}
FAST_WEIGHT_KINDS: tuple[str, ...] = tuple(_MIXERS)

# Set by the block itself, never through mixer_kwargs.
_RESERVED_MIXER_KWARGS = ("hidden_size", "d_model", "zero_init_output", "layer_idx", "device", "dtype")


def _check_kind(kind: Any) -> str:
    if kind not in _MIXERS:
        raise ValueError(f"unknown fast-weight kind {kind!r}; expected one of {'|'.join(FAST_WEIGHT_KINDS)}")
    return kind


def _check_positive_int(name: str, value: Any) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def default_mixer_kwargs(kind: str, hidden_size: int) -> dict[str, Any]:
    """The mixer settings a block of ``kind`` gets for a model of width ``hidden_size`` (module doc).

    Returns a fresh dict of JSON-serialisable values, without the width argument itself.
    """
    _check_kind(kind)
    _check_positive_int("hidden_size", hidden_size)
    if kind == "jet":
        head_dim = min(128, hidden_size)
        num_heads = max(1, hidden_size // 256)
        return {
            "num_heads": num_heads,
            "head_dim": head_dim,
            "expand_v": 2.0,
            "conv_size": 4,
            # Jet-Nemotron's 8, unless the value size is so small that no generator unit would be left.
            "generator_reduction": min(8, num_heads * head_dim * 2),
        }
    if kind == "gdn":
        head_dim = min(256, hidden_size)
        return {
            "num_heads": max(1, (3 * hidden_size) // (4 * head_dim)),
            "head_dim": head_dim,
            "expand_v": 2,
            "conv_size": 4,
            "use_gate": True,
            "use_short_conv": True,
        }
    d_inner = 2 * hidden_size
    return {
        "expand": 2,
        "d_state": min(128, hidden_size),
        "headdim": math.gcd(d_inner, 64),
        "ngroups": 1,
        "d_conv": 4,
    }


def _check_mixer_kwargs(kind: str, mixer_kwargs: Any) -> dict[str, Any]:
    """A copy of ``mixer_kwargs`` after checking every key is a setting of the ``kind`` layer."""
    if mixer_kwargs is None:
        return {}
    if not isinstance(mixer_kwargs, dict):
        raise ValueError(f"mixer_kwargs must be a dict, got {type(mixer_kwargs).__name__}")
    layer_class, _ = _MIXERS[kind]
    accepted = set(inspect.signature(layer_class.__init__).parameters) - {"self", *_RESERVED_MIXER_KWARGS}
    reserved = sorted(k for k in mixer_kwargs if k in _RESERVED_MIXER_KWARGS)
    if reserved:
        raise ValueError(
            f"mixer_kwargs may not set {reserved}: the fast-weight block sets them itself "
            f"(width from the base model, zero-initialised output, layer index)"
        )
    unknown = sorted(k for k in mixer_kwargs if k not in accepted)
    if unknown:
        raise ValueError(
            f"mixer_kwargs has unknown keys {unknown} for kind {kind!r} ({layer_class.__name__}); "
            f"expected keys from {sorted(accepted)}"
        )
    return copy.deepcopy(dict(mixer_kwargs))


# --------------------------------------------------------------------------------------------- the block


class FastWeightBlock(nn.Module):
    """A residual fast-weight block inserted between two decoder layers.

    ``h + mixer(norm(h))``, then ``h + mlp(post_norm(h))`` when ``intermediate_size`` is given. With
    ``zero_init_output`` the mixer's output projection and the MLP's ``down_proj`` start at zero, so
    the block is exactly the identity at insertion while every other parameter keeps a useful random
    init (the first gradient step moves the output projections; see :meth:`init_output_projections`).

    Args:
        kind: ``"jet"`` (JetBlock), ``"gdn"`` (GatedDeltaNet) or ``"mamba2"`` (Mamba2).
        hidden_size: the base model's width.
        mixer_kwargs: settings of the mixer layer, over :func:`default_mixer_kwargs` (kind, hidden_size).
        intermediate_size: the MLP's hidden size; None builds no MLP.
        hidden_act: the MLP's activation (a transformers ``ACT2FN`` name).
        rms_norm_eps: epsilon of ``norm`` and ``post_norm``.
        zero_init_output: zero the output projections (identity at insertion).
        layer_idx: index of the base layer this block follows (handed to the mixer for its messages).

    State-dict names: ``norm.weight``, ``mixer.*`` (upstream names of the layer), and with an MLP
    ``post_norm.weight``, ``mlp.{gate,up,down}_proj.weight``.
    """

    def __init__(
        self,
        kind: str,
        hidden_size: int,
        *,
        mixer_kwargs: dict[str, Any] | None = None,
        intermediate_size: int | None = None,
        hidden_act: str = "silu",
        rms_norm_eps: float = 1e-6,
        zero_init_output: bool = True,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.kind = _check_kind(kind)
        self.hidden_size = _check_positive_int("hidden_size", hidden_size)
        if intermediate_size is not None:
            _check_positive_int("intermediate_size", intermediate_size)
        self.intermediate_size = intermediate_size
        self.zero_init_output = zero_init_output
        self.layer_idx = layer_idx
        self.mixer_kwargs = {
            **default_mixer_kwargs(kind, hidden_size),
            **_check_mixer_kwargs(kind, mixer_kwargs),
        }

        layer_class, width_argument = _MIXERS[kind]
        self.norm = RMSNorm(hidden_size, eps=rms_norm_eps)
        self.mixer = layer_class(
            **{width_argument: hidden_size},
            **self.mixer_kwargs,
            zero_init_output=zero_init_output,
            layer_idx=layer_idx,
        )
        if intermediate_size is not None:
            self.post_norm = RMSNorm(hidden_size, eps=rms_norm_eps)
            mlp_config = SimpleNamespace(
                hidden_size=hidden_size, intermediate_size=intermediate_size, hidden_act=hidden_act
            )
            self.mlp = MLP(mlp_config)
        else:
            self.post_norm = None
            self.mlp = None
        if zero_init_output:
            self.init_output_projections()

    @property
    def has_mlp(self) -> bool:
        return self.mlp is not None

    def output_projections(self) -> list[nn.Linear]:
        """The projections that are zero at insertion: the mixer's output and the MLP's down_proj."""
        mixer_out = self.mixer.out_proj if self.kind == "mamba2" else self.mixer.o_proj
        return [mixer_out] + ([self.mlp.down_proj] if self.mlp is not None else [])

    @torch.no_grad()
    def init_retention(
        self, window: int, passes: int, horizon_chunks: int = RETENTION_HORIZON_CHUNKS
    ) -> None:
        """Set each head's decay at insertion for retention across windows (see
        :func:`retention_time_constants`): A_log = -log(tau_h * dt_h), with dt_h = softplus(dt_bias_h)
        the head's own initial step, so the per-token log decay A_h * dt_h is 1 / tau_h while the
        decay gate's input projection is near zero (GDN/Jet: g = -exp(A_log) softplus(a_proj x +
        dt_bias); Mamba2: dt A with dt = softplus(dt + dt_bias)). dt_bias is left alone: in Mamba2
        it also scales the write."""
        tau = retention_time_constants(self.mixer.A_log.numel(), window, passes, horizon_chunks)
        dt = torch.nn.functional.softplus(self.mixer.dt_bias.detach().float())
        self.mixer.A_log.copy_(-(tau.to(dt.device) * dt).log().to(self.mixer.A_log.dtype))

    @torch.no_grad()
    def init_output_projections(self) -> None:
        """Zero the output projections (weights and biases), making the block the identity.

        A ``PreTrainedModel`` that owns these blocks re-initialises every ``nn.Linear`` in
        ``post_init``; its ``_init_weights`` should call this afterwards for a fresh conversion.
        """
        for projection in self.output_projections():
            projection.weight.zero_()
            if projection.bias is not None:
                projection.bias.zero_()

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> FastWeightState:
        """The zero state a sequence starts from (see the mixer's ``init_state``)."""
        return self.mixer.init_state(batch_size, device=device, dtype=dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: FastWeightState | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, FastWeightState]:
        """Apply the block to ``hidden_states`` [B, T, hidden_size], continuing from ``state``.

        Args:
            hidden_states: the residual stream after the base layer this block follows.
            state: the block's state after the previous tokens, or None at a sequence start.
            attention_mask: [B, T] (or [B, past + T]) 1 for tokens, 0 for padding; padding leaves the
                state unchanged.

        Returns:
            ``(hidden_states + block update [B, T, hidden_size], new_state)``.
        """
        check_shape(
            "hidden_states", hidden_states, ("B", "T", self.hidden_size), what="batch, time, hidden_size"
        )
        mixed, new_state = self.mixer(self.norm(hidden_states), state=state, attention_mask=attention_mask)
        hidden_states = hidden_states + mixed
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_norm(hidden_states))
        return hidden_states, new_state

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, hidden_size={self.hidden_size}, mlp={self.intermediate_size}"


# --------------------------------------------------------------------------------------------- plans


@dataclass
class FastWeightPlan:
    """Where fast-weight blocks go in a base model, and what they are.

    Attributes:
        kind: ``"jet"``, ``"gdn"`` or ``"mamba2"``.
        insert_after: base decoder-layer indices after which a block is inserted (kept sorted). For
            Ouro the indices are in the shared stack, so a block runs in every loop step.
        with_mlp: whether every block carries an MLP of the base model's ``intermediate_size``.
        mixer_kwargs: mixer settings over the defaults of :func:`default_mixer_kwargs`. Store a
            :meth:`resolve`-d plan in checkpoints so later changes of the defaults cannot change it.

    Raises:
        ValueError: for an unknown kind, a negative, non-int or repeated index, or a mixer setting the
            layer does not have. Indices beyond the base model are caught by :meth:`validate`.
    """

    kind: str
    insert_after: list[int] = field(default_factory=list)
    with_mlp: bool = False
    mixer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if isinstance(self.insert_after, (str, bytes)) or not hasattr(self.insert_after, "__iter__"):
            raise ValueError(f"insert_after must be a list of layer indices, got {self.insert_after!r}")
        indices = list(self.insert_after)
        for index in indices:
            if not is_int(index) or index < 0:
                raise ValueError(f"insert_after entries must be non-negative ints, got {index!r}")
        repeated = sorted({index for index in indices if indices.count(index) > 1})
        if repeated:
            raise ValueError(f"insert_after lists layer(s) {repeated} more than once; one block per position")
        self.insert_after = sorted(indices)
        if not isinstance(self.with_mlp, bool):
            raise ValueError(f"with_mlp must be a bool, got {self.with_mlp!r}")
        self.mixer_kwargs = _check_mixer_kwargs(self.kind, self.mixer_kwargs)

    @property
    def num_blocks(self) -> int:
        return len(self.insert_after)

    def validate(self, num_layers: int) -> None:
        """Check the indices against a base model of ``num_layers`` decoder layers."""
        _check_positive_int("num_layers", num_layers)
        outside = [index for index in self.insert_after if index >= num_layers]
        if outside:
            raise ValueError(
                f"insert_after index(es) {outside} outside the base model's layers: "
                f"valid range is [0, {num_layers}), i.e. valid indices are 0..{num_layers - 1}"
            )

    def resolve(self, hidden_size: int) -> FastWeightPlan:
        """The same plan with every mixer setting explicit (defaults for ``hidden_size`` filled in)."""
        resolved = {**default_mixer_kwargs(self.kind, hidden_size), **self.mixer_kwargs}
        return FastWeightPlan(self.kind, list(self.insert_after), self.with_mlp, resolved)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` inverts it."""
        data = {
            "kind": self.kind,
            "insert_after": list(self.insert_after),
            "with_mlp": self.with_mlp,
            "mixer_kwargs": copy.deepcopy(self.mixer_kwargs),
        }
        try:
            json.dumps(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"mixer_kwargs must hold JSON values only: {error}") from error
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FastWeightPlan:
        """Rebuild a plan from :meth:`to_dict`'s output (e.g. read back from a config.json)."""
        if not isinstance(data, dict):
            raise ValueError(f"a fast-weight plan must be a dict, got {type(data).__name__}")
        expected = {"kind", "insert_after", "with_mlp", "mixer_kwargs"}
        unknown = sorted(set(data) - expected)
        if unknown:
            raise ValueError(f"fast-weight plan has unknown keys {unknown}; expected keys {sorted(expected)}")
        if "kind" not in data:
            raise ValueError("fast-weight plan needs a 'kind' (one of " + "|".join(FAST_WEIGHT_KINDS) + ")")
        return cls(
            kind=data["kind"],
            insert_after=list(data.get("insert_after", [])),
            with_mlp=data.get("with_mlp", False),
            mixer_kwargs=dict(data.get("mixer_kwargs") or {}),
        )


def plan_from_every(
    num_layers: int,
    k: int,
    *,
    kind: str = "gdn",
    with_mlp: bool = False,
    mixer_kwargs: dict[str, Any] | None = None,
) -> FastWeightPlan:
    """A block after every ``k``-th of ``num_layers`` layers: after layers k-1, 2k-1, ...

    Raises:
        ValueError: when k is not in [1, num_layers] (no block would be inserted otherwise).
    """
    _check_positive_int("num_layers", num_layers)
    if not is_int(k) or not 1 <= k <= num_layers:
        raise ValueError(f"k (insert every k layers) must be an int in [1, {num_layers}], got {k!r}")
    return FastWeightPlan(kind, list(range(k - 1, num_layers, k)), with_mlp, dict(mixer_kwargs or {}))


def evenly_spaced_positions(num_layers: int, num_blocks: int) -> list[int]:
    """``num_blocks`` layer indices splitting ``num_layers`` layers into equal groups, each block after
    the last layer of its group: ``(i + 1) * num_layers // num_blocks - 1`` (24, 6 -> 3, 7, ..., 23)."""
    _check_positive_int("num_layers", num_layers)
    _check_positive_int("num_blocks", num_blocks)
    if num_blocks > num_layers:
        raise ValueError(f"num_blocks must be in [1, num_layers={num_layers}], got {num_blocks}")
    return [(i + 1) * num_layers // num_blocks - 1 for i in range(num_blocks)]


def default_plan(
    base_config: Any,
    *,
    kind: str | None = None,
    with_mlp: bool = False,
    loop_span: tuple[int, int] | None = None,
) -> FastWeightPlan:
    """The default fast-weight plan of a base model's config, resolved (every mixer setting explicit).

    * Ouro: ``min(6, num_layers)`` blocks (Jet by default), evenly spaced in the shared stack.
    * Jet-Nemotron: an empty plan, its JetBlocks are the fast weights.
    * Llama family (llama, qwen2, qwen3, mistral): a block (GDN by default) after every 4th layer;
      one block after the last layer when the model has fewer than 4. When none of those falls
      inside the loop span (a short model: 4 layers loop layers 1..2 but the block would follow
      layer 3), the block goes after the span's last layer instead: sleep only consolidates into
      blocks it passes through.

    Args:
        base_config: the base model's config (or the model).
        kind: override the family's mixer kind while keeping its positions.
        with_mlp: give every block an MLP of the base model's ``intermediate_size``.
        loop_span: the (start, end) layers sleep loops (None: the family default).

    Raises:
        UnsupportedModelError (a ValueError): for a config of no supported family.
    """
    config = base_config.config if isinstance(base_config, nn.Module) else base_config
    adapter = family_adapter(config)
    num_layers = config.num_hidden_layers
    rule = adapter.default_blocks
    kind = kind or rule.kind
    if rule.count is not None:
        positions = evenly_spaced_positions(num_layers, min(rule.count, num_layers))
        plan = FastWeightPlan(kind, positions, with_mlp)
    elif rule.every is not None:
        plan = plan_from_every(num_layers, min(rule.every, num_layers), kind=kind, with_mlp=with_mlp)
    else:
        plan = FastWeightPlan(kind, [], with_mlp)
    start, end = loop_span if loop_span is not None else adapter.default_loop_span(num_layers)
    if blocks_outside_loop(plan, (start, end)):
        plan = FastWeightPlan(plan.kind, [end - 1], with_mlp)
    return plan.resolve(config.hidden_size)


def blocks_outside_loop(plan: FastWeightPlan, loop_span: tuple[int, int]) -> bool:
    """True when no inserted block lies in the loop body (a block after layer i is in it when
    start <= i < end): sleep's passes would then never consolidate into any of them."""
    start, end = loop_span
    return bool(plan.insert_after) and not any(start <= i < end for i in plan.insert_after)


# --------------------------------------------------------------------------------------------- building


def retention_time_constants(
    num_heads: int, window: int, passes: int, horizon_chunks: int = RETENTION_HORIZON_CHUNKS
) -> torch.Tensor:
    """Per-head decay time constants tau (in token steps) for blocks inserted under sleep.

    Under sleep every later chunk decays the state L tokens x N passes, so a chunk written now
    has been decayed K * N * L times when K more chunks have gone by. The standard Mamba2/fla
    init (A ~ U(0, 16), dt in [1e-3, 0.1]: per-token decay rates 0.001-1.6) forgets a chunk
    within a few dozen tokens, far less than one window of a real model (L = 512-2048), and
    the gradient through a forgotten write vanishes, so training cannot discover retention.
    The rule: tau log-spaced over the heads from one chunk's worth of passes, L * N (the
    fastest head keeps e^-1 of a write after one more chunk), to the horizon
    L * N * horizon_chunks (the slowest keeps e^-1 after horizon_chunks more chunks); a
    single head gets the horizon."""
    for name, value in (
        ("num_heads", num_heads),
        ("window", window),
        ("passes", passes),
        ("horizon_chunks", horizon_chunks),
    ):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    shortest = float(window * passes)
    longest = shortest * horizon_chunks
    if num_heads == 1:
        return torch.tensor([longest])
    return torch.logspace(math.log10(shortest), math.log10(longest), num_heads)


def build_fast_weight_blocks(base_config: Any, plan: FastWeightPlan) -> nn.ModuleDict:
    """One :class:`FastWeightBlock` per planned position, keyed by ``str(layer index)``.

    Blocks take the base model's ``hidden_size``, ``rms_norm_eps``, ``hidden_act`` and (with
    ``plan.with_mlp``) ``intermediate_size``; their output projections are zero (identity at
    insertion). Built on the current default device (``with torch.device("meta"):`` works).

    Raises:
        ValueError: for an index outside [0, num_hidden_layers), naming the valid range.
    """
    if not isinstance(plan, FastWeightPlan):
        raise ValueError(f"plan must be a FastWeightPlan, got {type(plan).__name__}")
    config = base_config.config if isinstance(base_config, nn.Module) else base_config
    plan.validate(config.num_hidden_layers)
    return nn.ModuleDict(
        {
            str(index): FastWeightBlock(
                plan.kind,
                config.hidden_size,
                mixer_kwargs=plan.mixer_kwargs,
                intermediate_size=config.intermediate_size if plan.with_mlp else None,
                hidden_act=getattr(config, "hidden_act", "silu"),
                rms_norm_eps=getattr(config, "rms_norm_eps", 1e-6),
                zero_init_output=True,
                layer_idx=index,
            )
            for index in plan.insert_after
        }
    )


# --------------------------------------------------------------------------------------------- reporting


def count_parameters(module: nn.Module | None, exclude: nn.Module | None = None) -> int:
    """Number of distinct parameter elements of ``module`` (tied tensors counted once), leaving out
    those that are also parameters of ``exclude``. Works on the meta device."""
    if module is None:
        return 0
    excluded = {id(p) for p in exclude.parameters()} if exclude is not None else set()
    return sum(p.numel() for p in module.parameters() if id(p) not in excluded)


def format_parameter_count(count: int) -> str:
    """``1434652673 -> "1.43B"``, ``116_000_000 -> "116.0M"``, ``950 -> "950"``."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            digits = 2 if suffix == "B" else 1
            return f"{count / scale:.{digits}f}{suffix}"
    return str(count)


def parameter_report(base_model: nn.Module, blocks: nn.Module | None) -> dict[str, Any]:
    """How many parameters the fast-weight blocks add to a base model.

    ``blocks`` may already be part of ``base_model``: its parameters are never counted as base.

    Returns:
        ``{"base_parameters": int, "added_parameters": int, "percent_added": float, "num_blocks": int,
        "summary": str}``; ``summary`` is one line, e.g.
        ``"6 jet blocks: +116.6M parameters (+8.13%) on a 1.43B-parameter base model"``.
    """
    base = count_parameters(base_model, exclude=blocks)
    added = count_parameters(blocks)
    percent = 100.0 * added / base if base else 0.0
    block_list = [
        m for m in (blocks.modules() if blocks is not None else []) if isinstance(m, FastWeightBlock)
    ]
    kinds = sorted({block.kind for block in block_list})
    if block_list:
        what = f"{len(block_list)} {'/'.join(kinds)} block{'s' if len(block_list) != 1 else ''}"
    else:
        what = "no fast-weight blocks"
    summary = (
        f"{what}: +{format_parameter_count(added)} parameters (+{percent:.2f}%) "
        f"on a {format_parameter_count(base)}-parameter base model"
    )
    return {
        "base_parameters": base,
        "added_parameters": added,
        "percent_added": percent,
        "num_blocks": len(block_list),
        "summary": summary,
    }

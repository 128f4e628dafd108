"""SleepCache: what a sleeping model remembers between calls.

- keys/values of every attention slot, for the tokens attention may still see: the current
  chunk (hard eviction) or the last L-1 tokens (sliding); bounded by the window whatever the
  context length;
- the fast-weight state of every stateful block (the part that survives eviction);
- the snapshot of those states taken when the current chunk started, and the chunk's input
  embeddings, so the chunk can be consolidated from its starting state when it is evicted.

It is a transformers ``Cache`` so ``generate()`` carries it between steps; the attention
layers of every family call ``update(k, v, slot)`` on it as on any cache.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from transformers.cache_utils import Cache

from ..layers.state import FastWeightState


class FastWeightStates:
    """Named fast-weight states, as every family's stateful blocks read and write them:
    inserted blocks by key, Jet-Nemotron's own jet layers by layer index."""

    states: dict[str, FastWeightState]

    def get_state(self, key: str) -> FastWeightState | None:
        return self.states.get(key)

    def set_state(self, key: str, state: FastWeightState) -> None:
        self.states[key] = state

    def get_jet_state(self, layer_idx: int) -> FastWeightState | None:
        return self.states.get(f"jet.{layer_idx}")

    def update_jet_state(self, state: FastWeightState, layer_idx: int, num_tokens: int) -> None:
        self.states[f"jet.{layer_idx}"] = state


class ConsolidationView(FastWeightStates):
    """What blocks see during consolidation passes: attention stays within the chunk (``update``
    stores nothing), fast-weight states live in `states` (the cache's own dict, or a private
    one when a pass is recomputed for activation checkpointing)."""

    def __init__(self, states: dict[str, FastWeightState]):
        self.states = states

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        return key_states, value_states


class SleepCache(FastWeightStates, Cache):
    """The cache of a model running under sleep (see module docstring)."""

    is_compileable = False

    def __init__(self, timed: bool = False) -> None:
        """timed: measure each consolidation's wall time into ``stats["consolidation_seconds"]``
        (on CUDA with a synchronisation on each side, so the time is the kernels', not their
        launches'; off by default, so training never waits on the device for a clock)."""
        super().__init__(layers=[])
        self.timed = timed
        self.keys: dict[int, torch.Tensor] = {}  # slot -> [B, heads, K, head_dim]
        self.values: dict[int, torch.Tensor] = {}
        self.key_positions: torch.Tensor | None = None  # [K] absolute positions of the kept keys
        self.key_valid: torch.Tensor | None = None  # [B, K] False at padding
        self.states: dict[str, FastWeightState] = {}
        self.snapshot: dict[str, FastWeightState] = {}
        self.chunk_embeds: torch.Tensor | None = None  # [B, fill, hidden] inputs of the current chunk
        self.chunk_valid: torch.Tensor | None = None  # [B, fill]
        self.chunk_woken = True  # every token of the current chunk has had a wake pass
        self.seen_tokens = 0
        # consolidation_passes / passes_per_chunk: body passes run per consolidated chunk (N,
        # or fewer with adaptive sleep).
        self.stats = {
            "evictions": 0,
            "consolidations": 0,
            "consolidation_seconds": 0.0,
            "consolidation_passes": 0,
            "passes_per_chunk": [],
        }

    def __bool__(self) -> bool:
        # transformers' Cache is a sequence of cache layers and this one keeps none (keys and
        # states live in dicts), so len() is 0; a cache is still a cache when tested for truth.
        return True

    def __repr__(self) -> str:
        return (
            f"SleepCache(seen_tokens={self.seen_tokens}, chunk_fill={self.chunk_fill}, "
            f"attention_tokens={self.attention_tokens}, states={len(self.states)})"
        )

    # ----------------------------------------------------------------------------- sizes
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far (padding included), evicted ones too."""
        return self.seen_tokens

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    @property
    def chunk_fill(self) -> int:
        return 0 if self.chunk_embeds is None else self.chunk_embeds.shape[1]

    @property
    def attention_tokens(self) -> int:
        """How many tokens' keys/values are held (per attention slot)."""
        return 0 if self.key_positions is None else int(self.key_positions.numel())

    def memory_bytes(self) -> int:
        """Bytes held: keys/values, states, snapshot and the chunk buffer."""
        tensors = list(self.keys.values()) + list(self.values.values())
        for states in (self.states, self.snapshot):
            for state in states.values():
                tensors += [state.recurrent, *state.conv]
        if self.chunk_embeds is not None:
            tensors.append(self.chunk_embeds)
        # Count storages, not views: a view keeps its whole storage alive.
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())

    # ------------------------------------------------------------- what layers call
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Append this call's keys/values to slot `layer_idx`; return all the slot holds."""
        if layer_idx in self.keys:
            key_states = torch.cat([self.keys[layer_idx], key_states], dim=-2)
            value_states = torch.cat([self.values[layer_idx], value_states], dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states

    # ------------------------------------------------------------- engine bookkeeping
    def record_keys(self, positions: torch.Tensor, valid: torch.Tensor) -> None:
        """After a wake pass: the kept keys now also cover these positions."""
        if self.key_positions is None:
            self.key_positions, self.key_valid = positions, valid
        else:
            self.key_positions = torch.cat([self.key_positions, positions])
            self.key_valid = torch.cat([self.key_valid, valid], dim=1)

    def keep_last_keys(self, count: int) -> None:
        """Drop all but the last `count` tokens' keys/values (sliding eviction)."""
        if self.attention_tokens <= count:
            return
        if count == 0:
            self.clear_keys()
            return
        for slot in self.keys:
            self.keys[slot] = self.keys[slot][..., -count:, :]
            self.values[slot] = self.values[slot][..., -count:, :]
        self.key_positions = self.key_positions[-count:]
        self.key_valid = self.key_valid[:, -count:]

    def clear_keys(self) -> None:
        self.keys.clear()
        self.values.clear()
        self.key_positions = self.key_valid = None

    def append_chunk(self, embeds: torch.Tensor, valid: torch.Tensor, woken: bool) -> None:
        if self.chunk_embeds is None:
            # A copy: a view would keep the caller's whole input alive while the chunk fills.
            self.chunk_embeds, self.chunk_valid = embeds.clone(), valid.clone()
        else:
            self.chunk_embeds = torch.cat([self.chunk_embeds, embeds], dim=1)
            self.chunk_valid = torch.cat([self.chunk_valid, valid], dim=1)
        self.chunk_woken = self.chunk_woken and woken
        self.seen_tokens += embeds.shape[1]

    def restore_snapshot(self) -> None:
        """Back to the states the current chunk started from (to consolidate it from there)."""
        self.states = dict(self.snapshot)

    @contextlib.contextmanager
    def consolidating(self, device: torch.device) -> Iterator[None]:
        """Bracket one consolidation: counted, and timed when the cache is `timed`."""
        self.stats["consolidations"] += 1
        if not self.timed:
            yield
            return
        synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda device=None: None)
        synchronize(device)
        began = time.perf_counter()
        yield
        synchronize(device)
        self.stats["consolidation_seconds"] += time.perf_counter() - began

    def commit_chunk(self, eviction: str) -> None:
        """The current chunk is consolidated: evict (hard: every key; sliding keeps the last
        L-1, trimmed after each wake pass) and make its end state the next chunk's snapshot."""
        if eviction == "hard":
            self.clear_keys()
        self.stats["evictions"] += 1
        self.snapshot = dict(self.states)
        self.chunk_embeds = self.chunk_valid = None
        self.chunk_woken = True

    # ------------------------------------------------------------- saving and copying
    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        """Everything this cache holds as named tensors + JSON-able metadata (for safetensors):
        :meth:`from_tensors` rebuilds an equal cache. A snapshot state that is the current
        state (no chunk started since) is stored once and shared again when rebuilt."""
        tensors: dict[str, torch.Tensor] = {}
        for slot in self.keys:
            tensors[f"keys.{slot}"], tensors[f"values.{slot}"] = self.keys[slot], self.values[slot]
        if self.key_positions is not None:
            tensors["key_positions"], tensors["key_valid"] = self.key_positions, self.key_valid
        if self.chunk_embeds is not None:
            tensors["chunk_embeds"], tensors["chunk_valid"] = self.chunk_embeds, self.chunk_valid
        shared = []
        for group, states in (("states", self.states), ("snapshot", self.snapshot)):
            for key, state in states.items():
                if group == "snapshot" and self.states.get(key) is state:
                    shared.append(key)
                    continue
                tensors[f"{group}.{key}.recurrent"] = state.recurrent
                for i, conv in enumerate(state.conv):
                    tensors[f"{group}.{key}.conv.{i}"] = conv
        metadata = {
            "slots": sorted(self.keys),
            "states": {key: len(state.conv) for key, state in self.states.items()},
            "snapshot": {key: len(state.conv) for key, state in self.snapshot.items()},
            "snapshot_shared": shared,
            "chunk_woken": self.chunk_woken,
            "seen_tokens": self.seen_tokens,
        }
        # Owned, contiguous copies: safetensors refuses views that share storage.
        return {name: t.detach().contiguous().clone() for name, t in tensors.items()}, metadata

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, object]) -> SleepCache:
        """The cache :meth:`to_tensors` described."""
        cache = cls()
        for slot in metadata["slots"]:
            cache.keys[int(slot)], cache.values[int(slot)] = (
                tensors[f"keys.{slot}"],
                tensors[f"values.{slot}"],
            )
        if "key_positions" in tensors:
            cache.key_positions, cache.key_valid = tensors["key_positions"], tensors["key_valid"]
        if "chunk_embeds" in tensors:
            cache.chunk_embeds, cache.chunk_valid = tensors["chunk_embeds"], tensors["chunk_valid"]
        for group in ("states", "snapshot"):
            target = getattr(cache, group)
            for key, convs in metadata[group].items():
                if group == "snapshot" and key in metadata["snapshot_shared"]:
                    target[key] = cache.states[key]
                    continue
                target[key] = FastWeightState(
                    tensors[f"{group}.{key}.recurrent"],
                    tuple(tensors[f"{group}.{key}.conv.{i}"] for i in range(convs)),
                )
        cache.chunk_woken = bool(metadata["chunk_woken"])
        cache.seen_tokens = int(metadata["seen_tokens"])
        return cache

    def copy(self) -> SleepCache:
        """An independent copy (nothing the copy consumes reaches this cache)."""
        copied = SleepCache.from_tensors(*self.to_tensors())
        copied.timed = self.timed
        return copied

    @property
    def batch_size(self) -> int | None:
        """Rows held (None for a cache that has consumed nothing)."""
        if self.keys:
            return next(iter(self.keys.values())).shape[0]
        if self.states:
            return next(iter(self.states.values())).batch_size
        if self.chunk_embeds is not None:
            return self.chunk_embeds.shape[0]
        return None

    # ------------------------------------------------------------- generate() support
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, torch.as_tensor(indices, device=t.device))

        for slot in self.keys:
            self.keys[slot], self.values[slot] = pick(self.keys[slot]), pick(self.values[slot])
        if self.key_valid is not None:
            self.key_valid = pick(self.key_valid)
        for states in (self.states, self.snapshot):
            for key, state in states.items():
                states[key] = state.index_select(torch.as_tensor(indices, device=state.recurrent.device))
        if self.chunk_embeds is not None:
            self.chunk_embeds, self.chunk_valid = pick(self.chunk_embeds), pick(self.chunk_valid)

    def batch_repeat_interleave(self, repeats: int) -> None:
        batch = self.batch_size
        if batch is not None:
            self.batch_select_indices(torch.arange(batch).repeat_interleave(repeats))

    def crop(self, max_length: int) -> None:
        raise ValueError(
            "a SleepCache cannot be cropped: consolidated fast-weight state cannot forget tokens"
        )

    def reset(self) -> None:
        self.__init__(timed=self.timed)

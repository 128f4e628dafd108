"""The sleep engine: cut the stream into chunks of L tokens, wake on tokens that need
outputs, consolidate every chunk with N passes before its keys/values are evicted.

Semantics (design.md, "Semantics"):
- chunks are cut at multiples of L from the sequence start;
- wake: tokens that need outputs get one ordinary pass with the current fast-weight state
  and the keys/values of the current chunk (hard) or of the last L-1 tokens (sliding); the
  pass updates the state provisionally;
- eviction: when a chunk is complete, the state is restored to the snapshot taken at the
  chunk start and the chunk is consolidated with N passes from it (prefix once, body N
  times, suffix once; attention within the chunk; refined hidden states discarded). With
  N=1 a fully woken chunk is not re-run: its wake pass was that single pass;
- hard eviction then drops all keys/values; sliding eviction keeps those of the last L-1
  tokens (they are trimmed after every wake pass).

The same function serves prompt ingestion, token-by-token generation and the training
forward of Algorithm 1: the caller says which positions need outputs, and complete chunks
whose outputs nobody needs are consolidated without a wake pass (context chunks).
Everything is differentiable: states are values threaded through calls, never mutated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.utils.checkpoint

from ..layers.state import FastWeightState
from .blocks import PassContext
from .cache import ConsolidationView, SleepCache
from .masks import attention_bias
from .settings import SleepSettings
from .stack import StackView


class SleepEngine:
    """Runs a :class:`StackView` under :class:`SleepSettings`."""

    def __init__(self, stack: StackView, settings: SleepSettings, checkpoint_passes: bool = False):
        """checkpoint_passes: recompute consolidation passes in backward instead of keeping
        their activations (activation checkpointing per pass, for training with large N)."""
        self.stack = stack
        self.settings = settings
        self.checkpoint_passes = checkpoint_passes

    # ------------------------------------------------------------------ public
    def new_cache(self) -> SleepCache:
        return SleepCache()

    def forward(
        self,
        inputs: torch.Tensor,
        cache: SleepCache,
        padding_mask: torch.Tensor | None = None,
        output_positions: torch.Tensor | None = None,
        on_segment: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Consume `inputs` after what `cache` holds: token ids [B, T] (embedded one chunk at a
        time, so a long prompt never exists as one [B, T, hidden] tensor) or embeddings
        [B, T, hidden].

        padding_mask: [B, T] 1/0 (1 = real token); None = nothing padded.
        output_positions: [T] bool, the positions whose final hidden states are wanted (None = all).
        on_segment: called with the number of tokens of every segment consumed (progress bars).
        Returns the final hidden states of the wanted positions, [B, wanted, hidden], in order.
        """
        batch, length = inputs.shape[:2]
        device = inputs.device
        embed = self.stack.embed if not inputs.is_floating_point() else (lambda segment: segment)
        valid = (
            torch.ones(batch, length, dtype=torch.bool, device=device)
            if padding_mask is None
            else padding_mask.to(device=device, dtype=torch.bool)
        )
        wanted = (
            torch.ones(length, dtype=torch.bool, device=device)
            if output_positions is None
            else output_positions.to(device=device, dtype=torch.bool)
        )
        window = self.settings.window
        outputs: list[torch.Tensor] = []
        start = 0
        while start < length:
            stop = min(length, start + window - cache.chunk_fill)
            completes = cache.chunk_fill + (stop - start) == window
            wants = bool(wanted[start:stop].any())
            # A complete chunk nobody reads is only consolidated (Algorithm 1's context chunk);
            # sliding eviction always wakes, since the window keeps wake-pass keys/values.
            woken = wants or not completes or self.settings.eviction == "sliding"
            embeds, seg_valid = embed(inputs[:, start:stop]), valid[:, start:stop]
            if woken:
                hidden = self._wake(embeds, seg_valid, cache)
                if wants:
                    outputs.append(hidden[:, wanted[start:stop]])
            cache.append_chunk(embeds, seg_valid, woken)
            if completes:
                self._evict(cache)
            if on_segment is not None:
                on_segment(stop - start)
            start = stop
        if not outputs:
            hidden_size = self.stack.embed.weight.shape[-1]
            return torch.zeros(batch, 0, hidden_size, device=device, dtype=self.stack.embed.weight.dtype)
        return torch.cat(outputs, dim=1)

    # ------------------------------------------------------------------ passes
    def _context(self, embeds, positions, key_positions, key_valid, valid, cache_view) -> PassContext:
        sliding = self.settings.eviction == "sliding"
        biases: dict[int | None, torch.Tensor] = {}

        def bias(layer_window: int | None) -> torch.Tensor:
            window = layer_window
            if sliding:
                window = self.settings.window if window is None else min(window, self.settings.window)
            if window not in biases:
                biases[window] = attention_bias(
                    positions, key_positions, key_valid, window=window, dtype=embeds.dtype
                )
            return biases[window]

        return PassContext(
            position_embeddings=self.stack.rotary(embeds, positions[None]),
            attention_bias=bias,
            padding_mask=None if bool(valid.all()) else valid.long(),
            cache=cache_view,
        )

    def _wake(self, embeds: torch.Tensor, valid: torch.Tensor, cache: SleepCache) -> torch.Tensor:
        """One ordinary pass over tokens of the current chunk; keys/values are kept."""
        first = cache.seen_tokens
        positions = torch.arange(first, first + embeds.shape[1], device=embeds.device)
        if cache.key_positions is None:
            key_positions, key_valid = positions, valid
        else:
            key_positions = torch.cat([cache.key_positions, positions])
            key_valid = torch.cat([cache.key_valid, valid], dim=1)
        ctx = self._context(embeds, positions, key_positions, key_valid, valid, cache)
        hidden = self.stack.wake(embeds, ctx)
        cache.record_keys(positions, valid)
        if self.settings.eviction == "sliding":
            cache.keep_last_keys(self.settings.window - 1)
        return hidden

    def _evict(self, cache: SleepCache) -> None:
        """The current chunk is full: consolidate it from its snapshot, then evict. With N = 1
        a fully woken chunk is not re-run: its wake pass was that single pass."""
        if self.settings.passes > 1 or not cache.chunk_woken:
            embeds, valid = cache.chunk_embeds, cache.chunk_valid
            with cache.consolidating(embeds.device):
                cache.restore_snapshot()
                first = cache.seen_tokens - embeds.shape[1]
                positions = torch.arange(first, cache.seen_tokens, device=embeds.device)
                view = ConsolidationView(cache.states)
                ctx = self._context(embeds, positions, positions, valid, valid, view)
                used = self._consolidate(embeds, ctx)
            cache.stats["consolidation_passes"] += used
            cache.stats["passes_per_chunk"].append(used)
        cache.commit_chunk(self.settings.eviction)

    def _consolidate(self, embeds: torch.Tensor, ctx: PassContext) -> int:
        """Sleep on a chunk (Algorithm 1): prefix once, body N times (pass k+1 reads pass k's
        output and the states pass k left), suffix once as far as its last stateful block. The
        refined hidden states are discarded; only the states in ``ctx.cache`` are kept.
        With a tolerance (adaptive sleep) the body stops early once the states have converged.
        Returns the body passes run."""
        stack = self.stack
        tolerance = self.settings.tolerance
        hidden = stack.run(stack.prefix, embeds, ctx)
        used = 0
        for _ in range(self.settings.passes):
            before = dict(ctx.cache.states)
            if self.checkpoint_passes and torch.is_grad_enabled():
                hidden = self._checkpointed_body_pass(hidden, ctx)
            else:
                hidden = stack.body_pass(hidden, ctx)
            used += 1
            if tolerance and used >= 2 and state_change(before, ctx.cache.states) < tolerance:
                break
        stack.run(stack.stateful_suffix, hidden, ctx)
        return used

    def _checkpointed_body_pass(self, hidden: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        """A body pass whose activations are recomputed in backward instead of kept (memory per
        pass instead of per pass x N; about one extra pass of compute). The recomputation must
        see this pass's input states, which later passes overwrite in the cache: the pass runs on
        a private copy of the states it starts from and hands its new states back as outputs.
        (Consolidation stores no keys/values.)"""

        def run(hidden: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, dict]:
            view = ConsolidationView(dict(inputs))
            hidden = self.stack.body_pass(hidden, replace(ctx, cache=view))
            return hidden, view.states

        hidden, states = torch.utils.checkpoint.checkpoint(
            run, hidden, dict(ctx.cache.states), use_reentrant=False
        )
        ctx.cache.states.update(states)
        return hidden


def state_change(before: dict[str, FastWeightState], after: dict[str, FastWeightState]) -> float:
    """How much a pass moved the fast-weight states: per batch row, |after - before| / |after|
    over every recurrent state together (Frobenius norms); the largest row's value."""
    moved = held = 0.0
    for key, state in after.items():
        new = state.recurrent.detach().float().flatten(1)
        old = before[key].recurrent.detach().float().flatten(1) if key in before else torch.zeros_like(new)
        moved = moved + (new - old).pow(2).sum(dim=1)
        held = held + new.pow(2).sum(dim=1)
    if isinstance(moved, float):  # no stateful block: nothing to converge
        return 0.0
    return float((moved.sqrt() / held.sqrt().clamp_min(1e-12)).max())

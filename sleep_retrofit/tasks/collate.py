"""Batching for sleep: lay tokenised examples out the way the chunk schedule reads them.

The sleep engine cuts every row of a batch into chunks of L tokens at multiples of L from the
start of the (padded) tensor; a chunk whose loss mask is all zero is a context chunk (it is
consolidated with N passes and evicted), a chunk with loss is a target chunk (one ordinary
pass that predicts). An example is therefore two parts, split at its `target_start`:

    context part  = input_ids[:target_start]   no loss anywhere
    target part   = input_ids[target_start:]   the query/prompt tail and the answer tokens

Padding rule (all padding is on the left of a part; pad tokens have attention_mask 0,
labels -100 and loss_mask 0):

    row = [pad * (C - c)] [context part: c tokens] [pad * (T - t)] [target part: t tokens]

    C = context_length, or L * ceil(max c / L)                      (a multiple of L)
    T = target_length,  or max t          if max t <= L
                            L * ceil(max t / L)  otherwise           (a multiple of L)

So every context ends exactly on a chunk boundary (column C), every target part starts
there, and every row ends at the last column. Consequences:
- The chunking of an example never depends on what it is batched with, up to chunks that
  are pure padding: its context is cut at multiples of L counted back from the context's
  end, and a target part that fits one chunk is one chunk (a longer one is cut at multiples
  of L counted back from the example's end).
- Chunk kinds are the same for every row: the C/L chunks before column C are context chunks
  (zero loss mask in all rows); the chunks from C on are target chunks.
- Rows end together, so the same layout serves batched generation (the prompt's tail is the
  target part).
- A row with a short context starts with chunks that are pure padding (and, when target
  parts span several chunks, a short target part is preceded by some); masked positions
  must leave the fast-weight state unchanged (the layers' contract), and attention must
  tolerate a fully masked chunk.
- `target_start = 0` (no context part) is plain left padding to the rule for T.

Per example the collator reads `input_ids`, `loss_mask` (1 = this token is a target; else
derived from `labels != -100`, else none) and `target_start` (default: one before the first
target token, the position that predicts it; 0 when there is no target). It checks that no
context token carries loss and that the first token of the target part is not a target (its
prediction would come from the previous chunk). Output tensors `[batch, C + T]`: input_ids,
attention_mask, labels (HF convention: the model shifts; -100 = no loss), loss_mask (int64,
equal to labels != -100), plus any `per_token_fields` padded with 0, and `context_length`
(= C, a 0-d tensor) when `return_context_length=True`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..checks import is_int

IGNORE_INDEX = -100


def _ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class SleepCollator:
    """Pad and align examples for the sleep chunk schedule (see the module docstring)."""

    def __init__(
        self,
        chunk_size: int,
        pad_token_id: int | None = None,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        context_length: int | None = None,
        target_length: int | None = None,
        per_token_fields: Sequence[str] = (),
        return_context_length: bool = False,
    ):
        if not is_int(chunk_size) or chunk_size < 1:
            raise ValueError(f"chunk_size (L) must be a positive int, got {chunk_size!r}")
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id
        if not is_int(pad_token_id):
            raise ValueError(
                f"pad_token_id must be an int (or give a tokenizer with a pad token), got {pad_token_id!r}"
            )
        if context_length is not None and (
            not isinstance(context_length, int) or context_length < 0 or context_length % chunk_size
        ):
            raise ValueError(
                f"context_length must be a non-negative multiple of chunk_size={chunk_size}, "
                f"got {context_length!r}"
            )
        if target_length is not None and (
            not isinstance(target_length, int)
            or target_length < 1
            or (target_length > chunk_size and target_length % chunk_size)
        ):
            raise ValueError(
                f"target_length must be a positive int, <= chunk_size={chunk_size} or a multiple of it, "
                f"got {target_length!r}"
            )
        self.chunk_size = chunk_size
        self.pad_token_id = pad_token_id
        self.context_length = context_length
        self.target_length = target_length
        self.per_token_fields = tuple(per_token_fields)
        self.return_context_length = return_context_length

    # -- one example ------------------------------------------------------------------------
    def _parts(self, index: int, feature: Mapping[str, Any]) -> tuple[list[int], list[int], int]:
        if "input_ids" not in feature:
            raise ValueError(f"example {index} has no 'input_ids' (fields: {sorted(feature)})")
        input_ids = [int(x) for x in feature["input_ids"]]
        n = len(input_ids)
        if n == 0:
            raise ValueError(f"example {index} has empty input_ids")
        if feature.get("loss_mask") is not None:
            loss_mask = [int(x) for x in feature["loss_mask"]]
        elif feature.get("labels") is not None:
            loss_mask = [int(int(x) != IGNORE_INDEX) for x in feature["labels"]]
        else:
            loss_mask = [0] * n
        if len(loss_mask) != n or any(x not in (0, 1) for x in loss_mask):
            raise ValueError(f"example {index}: loss_mask must be {n} values in {{0, 1}}")
        start = feature.get("target_start")
        if start is None:
            start = loss_mask.index(1) - 1 if 1 in loss_mask else 0
            if start < 0:
                raise ValueError(f"example {index}: its first token is a target, which nothing can predict")
        start = int(start)
        if not 0 <= start <= n:
            raise ValueError(f"example {index}: target_start={start} outside [0, {n}]")
        if any(loss_mask[:start]):
            raise ValueError(f"example {index}: loss on context tokens (before target_start={start})")
        if start < n and loss_mask[start]:
            raise ValueError(
                f"example {index}: the first token of the target part (position {start}) is a target; its "
                "prediction would come from the previous chunk"
            )
        for name in self.per_token_fields:
            if len(feature.get(name) or []) != n:
                raise ValueError(f"example {index}: per-token field {name!r} must have {n} values")
        return input_ids, loss_mask, start

    # -- the batch ----------------------------------------------------------------------------
    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        parts = [self._parts(i, f) for i, f in enumerate(features)]
        L = self.chunk_size
        longest_context = max(start for _, _, start in parts)
        longest_target = max(len(ids) - start for ids, _, start in parts)
        if self.context_length is not None:
            if longest_context > self.context_length:
                raise ValueError(
                    f"a context part has {longest_context} tokens > context_length={self.context_length}"
                )
            C = self.context_length
        else:
            C = _ceil_to(longest_context, L)
        if self.target_length is not None:
            if longest_target > self.target_length:
                raise ValueError(
                    f"a target part has {longest_target} tokens > target_length={self.target_length}"
                )
            T = self.target_length
        else:
            T = longest_target if longest_target <= L else _ceil_to(longest_target, L)

        batch = len(features)
        input_ids = torch.full((batch, C + T), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, C + T), dtype=torch.long)
        loss_mask = torch.zeros((batch, C + T), dtype=torch.long)
        extras = {name: torch.zeros((batch, C + T), dtype=torch.long) for name in self.per_token_fields}
        for row, ((ids, mask, start), feature) in enumerate(zip(parts, features, strict=True)):
            # Context right-aligned to column C, target part right-aligned to the end.
            columns = list(range(C - start, C)) + list(range(C + T - (len(ids) - start), C + T))
            where = torch.tensor(columns, dtype=torch.long)
            input_ids[row, where] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, where] = 1
            loss_mask[row, where] = torch.tensor(mask, dtype=torch.long)
            for name, tensor in extras.items():
                tensor[row, where] = torch.tensor([int(x) for x in feature[name]], dtype=torch.long)
        labels = torch.where(loss_mask.bool(), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "loss_mask": loss_mask,
        }
        out.update(extras)
        if self.return_context_length:
            out["context_length"] = torch.tensor(C, dtype=torch.long)
        return out

"""Reading a synthetic task's answers from predicted target tokens, and scoring them: one reader per
task, used by the evaluation grid and by the trainer's periodic evaluation alike.

The model side (decoding every target from the model's own earlier predictions,
``modeling.free_running_targets``) is the caller's; a reader says which tokens each target may take
(`candidates`), turns one row's predicted token ids into the task's answer (`read`) and scores a
split's answers (`score`), so that both callers read and score exactly alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .depo import DepoTask, score_depo
from .rule110 import Rule110Task, score_rule110

__all__ = ["DepoReader", "Rule110Reader", "TargetReader", "make_reader", "read_batch", "token_losses"]


@dataclass(frozen=True)
class Rule110Reader:
    """Label j is the larger of string j's two bit-token logits (`candidates` [strings, 2])."""

    task: Rule110Task
    candidates: torch.Tensor

    @classmethod
    def for_ids(cls, task: Rule110Task, token_ids: Mapping[str, int]) -> Rule110Reader:
        strings = range(task.config.num_strings)
        return cls(task, torch.tensor([[token_ids[task.bit_token(j, b)] for b in (0, 1)] for j in strings]))

    def read(self, row: Mapping[str, Any], predicted: Sequence[int]) -> list[int]:
        bits = {int(self.candidates[j, b]): b for j in range(self.candidates.shape[0]) for b in (0, 1)}
        return [bits[int(token)] for token in predicted]

    def score(
        self, predictions: Sequence[Sequence[int]], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        scores = score_rule110(predictions, [row["answer"] for row in rows])
        per_label = scores["per_label_accuracy"]
        return {
            "accuracy": scores["exact_match"],
            "exact_match": scores["exact_match"],
            "per_label_accuracy": per_label,
            "mean_per_label_accuracy": sum(per_label) / len(per_label),
            "chance_exact_match": scores["chance_exact_match"],
            "majority_exact_match": scores["majority_exact_match"],
        }


@dataclass(frozen=True)
class DepoReader:
    """Answers are read through the whole model vocabulary (a wrong answer may be any token):
    `names` maps a model id to its token; an id outside it makes that answer unreadable (wrong)."""

    task: DepoTask
    names: Mapping[int, str]
    candidates: None = None

    def read(self, row: Mapping[str, Any], predicted: Sequence[int]) -> list[str | None]:
        length, queries = self.task.config.word_length, len(row["query_targets"])
        if len(predicted) != queries * length:
            raise ValueError(f"depo: expected {queries * length} answer tokens, got {len(predicted)}")
        tokens = [self.names.get(int(i)) for i in predicted]
        words = [tokens[q * length : (q + 1) * length] for q in range(queries)]
        return [None if None in word else " ".join(word) for word in words]

    def score(
        self, predictions: Sequence[Sequence[str | None]], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        scores = score_depo(predictions, rows)
        return {
            "accuracy": scores["accuracy"],
            "accuracy_by_hops": scores["accuracy_by_hops"],
            "num_queries": scores["count"],
        }


TargetReader = Rule110Reader | DepoReader


def make_reader(
    task: Rule110Task | DepoTask, token_ids: Mapping[str, int], names: Mapping[int, str]
) -> TargetReader:
    """The reader of `task` for a model whose tokenizer maps the task's tokens to `token_ids`
    and whose ids read back as `names` (id -> token)."""
    if isinstance(task, Rule110Task):
        return Rule110Reader.for_ids(task, token_ids)
    if isinstance(task, DepoTask):
        return DepoReader(task, names)
    raise TypeError(f"no target reader for {type(task).__name__}")


def token_losses(teacher_forced: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[float], int]:
    """Per-token cross-entropies of teacher-forced (logits, targets) rows, and how many targets
    their argmax hits (token accuracy)."""
    losses: list[float] = []
    hits = 0
    for logits, targets in teacher_forced:
        losses.extend(torch.nn.functional.cross_entropy(logits, targets, reduction="none").tolist())
        hits += int((logits.argmax(-1) == targets).sum())
    return losses, hits


def read_batch(
    reader: TargetReader,
    rows: Sequence[Mapping[str, Any]],
    predicted: torch.Tensor,
    teacher_forced: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[Any], list[float], int]:
    """One batch's answers (`reader.read` per row of the free-running `predicted` ids) and its
    :func:`token_losses`."""
    answers = [reader.read(row, ids) for row, ids in zip(rows, predicted.tolist(), strict=True)]
    return answers, *token_losses(teacher_forced)

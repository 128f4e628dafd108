"""Periodic evaluation during training: held-out (validation) loss and the task's own score.

Scoring is the evaluation grid's (sleep_retrofit.evaluation), in the sleep layout: the loss and
token accuracy are teacher-forced; Rule 110 decodes label j as the larger of string j's two
bit-token logits from the model's own earlier labels (``free_running_targets``: gold labels fed
back would leak t) and scores with ``score_rule110``; Depo takes the argmax token per answer position and
scores whole words with ``score_depo``; GSM-Infinite reports the loss and the token accuracy
of the answer (generation-based accuracy is the evaluation grid's job).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..modeling import free_running_targets, target_logits
from ..tasks import SleepCollator, make_task, score_depo, score_rule110
from .config import TrainConfig

__all__ = ["evaluate_model"]


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    config: TrainConfig,
    rows: list[dict[str, Any]],
    tokenizer: Any,
    passes: int,
    window: int,
    eviction: str,
) -> dict[str, Any]:
    """Mean target loss, token accuracy and the task score of `model` on `rows`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collator = SleepCollator(window, pad_id)
    task = make_task(config.data.task, **config.data.options) if config.data.task != "gsm_infinite" else None
    losses: list[float] = []
    correct_tokens = 0
    predictions: list[Any] = []
    bit_ids = None
    if config.data.task == "rule110":
        bit_ids = torch.tensor(
            [
                [task.vocabulary.ids([task.bit_token(j, b)])[0] for b in (0, 1)]
                for j in range(task.config.num_strings)
            ]
        )
    forward = {"passes": passes, "window": window, "eviction": eviction, "use_cache": False}
    for start in range(0, len(rows), config.eval_batch_size):
        batch_rows = rows[start : start + config.eval_batch_size]
        batch = collator([{k: r[k] for k in ("input_ids", "loss_mask", "target_start")} for r in batch_rows])
        labels = batch["labels"].to(device)
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if bit_ids is not None:
            predicted, per_row = free_running_targets(
                model, input_ids, labels, bit_ids, attention_mask=attention_mask, **forward
            )
            bit_of = {int(bit_ids[j, b]): b for j in range(bit_ids.shape[0]) for b in (0, 1)}
            predictions += [[bit_of[int(token)] for token in row] for row in predicted.tolist()]
        else:
            output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **forward)
            per_row = target_logits(output.logits, labels)
        for row, (logits, targets) in zip(batch_rows, per_row, strict=True):
            losses.extend(nn.functional.cross_entropy(logits, targets, reduction="none").tolist())
            correct_tokens += int((logits.argmax(-1) == targets).sum())
            if config.data.task == "depo":
                tokens = tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
                length = task.config.word_length
                predictions.append(
                    [
                        " ".join(tokens[q * length : (q + 1) * length])
                        for q in range(len(row["query_targets"]))
                    ]
                )
    record: dict[str, Any] = {
        "loss": sum(losses) / max(1, len(losses)),
        "token_accuracy": correct_tokens / max(1, len(losses)),
        "num_examples": len(rows),
    }
    if config.data.task == "rule110":
        scores = score_rule110(predictions, [row["answer"] for row in rows])
        record["exact_match"] = scores["exact_match"]
        record["per_label_accuracy"] = scores["per_label_accuracy"]
        record["chance_exact_match"] = scores["chance_exact_match"]
    elif config.data.task == "depo":
        record["accuracy"] = score_depo(predictions, rows)["accuracy"]
    model.train(was_training)
    return record

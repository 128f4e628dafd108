"""Periodic evaluation during training: held-out (validation) loss and the task's own score.

Scoring is the evaluation grid's (sleep_retrofit.evaluation): teacher-forced, one forward per
batch in the sleep layout; Rule 110 reads label j as the larger of string j's two bit-token
logits and scores with ``score_rule110``; Depo takes the argmax token per answer position and
scores whole words with ``score_depo``; GSM-Infinite reports the loss and the token accuracy
of the answer (generation-based accuracy is the evaluation grid's job).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..modeling import target_logits
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
    for start in range(0, len(rows), config.eval_batch_size):
        batch_rows = rows[start : start + config.eval_batch_size]
        batch = collator([{k: r[k] for k in ("input_ids", "loss_mask", "target_start")} for r in batch_rows])
        labels = batch["labels"].to(device)
        output = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            labels=labels,
            passes=passes,
            window=window,
            eviction=eviction,
            use_cache=False,
        )
        for row, (logits, targets) in zip(batch_rows, target_logits(output.logits, labels), strict=True):
            losses.extend(nn.functional.cross_entropy(logits, targets, reduction="none").tolist())
            correct_tokens += int((logits.argmax(-1) == targets).sum())
            if config.data.task == "rule110":
                bits = torch.tensor(
                    [
                        [task.vocabulary.ids([task.bit_token(j, b)])[0] for b in (0, 1)]
                        for j in range(len(targets))
                    ],
                    device=logits.device,
                )
                predictions.append(logits.gather(1, bits).argmax(-1).tolist())
            elif config.data.task == "depo":
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
        record["chance_exact_match"] = scores["chance_exact_match"]
    elif config.data.task == "depo":
        record["accuracy"] = score_depo(predictions, rows)["accuracy"]
    model.train(was_training)
    return record

"""Periodic evaluation during training: held-out (validation) loss and the task's own score.

Rule 110 and Depo are read and scored by the same readers as the evaluation grid
(sleep_retrofit.tasks.reading): every answer decoded free running, from the model's own earlier
answers (gold ones fed back would leak t; ``free_running_targets``). Loss and token accuracy are
teacher-forced. GSM-Infinite reports the loss and the token accuracy of the answer
(generation-based accuracy is the evaluation grid's job), plain text (data.task: text) the loss
and token accuracy after the first window.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..modeling import free_running_targets, target_logits
from ..tasks import SleepCollator, make_task
from ..tasks.reading import make_reader, read_batch, token_losses
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
    reader = None
    if config.data.task in ("rule110", "depo"):
        vocabulary = tokenizer.get_vocab()
        task = make_task(config.data.task, **config.data.options)
        reader = make_reader(task, vocabulary, {i: token for token, i in vocabulary.items()})
    losses: list[float] = []
    hits = 0
    answers: list[Any] = []
    forward = {"passes": passes, "window": window, "eviction": eviction, "use_cache": False}
    for start in range(0, len(rows), config.eval_batch_size):
        batch_rows = rows[start : start + config.eval_batch_size]
        batch = collator([{k: r[k] for k in ("input_ids", "loss_mask", "target_start")} for r in batch_rows])
        labels = batch["labels"].to(device)
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if reader is not None:
            predicted, per_row = free_running_targets(
                model, input_ids, labels, reader.candidates, attention_mask=attention_mask, **forward
            )
            batch_answers, batch_losses, batch_hits = read_batch(reader, batch_rows, predicted, per_row)
            answers += batch_answers
        else:
            output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **forward)
            batch_losses, batch_hits = token_losses(target_logits(output.logits, labels))
        losses += batch_losses
        hits += batch_hits
    record: dict[str, Any] = {
        "loss": sum(losses) / max(1, len(losses)),
        "token_accuracy": hits / max(1, len(losses)),
        "num_examples": len(rows),
    }
    if reader is not None:
        record.update(reader.score(answers, rows))
    model.train(was_training)
    return record

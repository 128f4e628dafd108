"""What a training step minimises.

- ``ce`` (Algorithm 1): the masked cross-entropy of the targets, context chunks consolidated with
  N passes before eviction, full backprop through every pass and chunk.
- ``distill``: KL(teacher || student) on the same targets, needing no labels. The teacher is the
  base model as the stage started, run once with full attention over the whole row (no
  eviction, no sleep); the student is the converted model under eviction and sleep. Mixed with
  (1 - weight) x the cross-entropy; `temperature` softens both distributions (the KL is scaled
  by temperature**2, as usual, so its gradients keep their size).
"""

from __future__ import annotations

import torch
from torch import nn


def training_loss(model: nn.Module, batch: dict[str, torch.Tensor], passes: int, window: int, eviction: str):
    """The masked cross-entropy of Algorithm 1 for one collated batch (N passes, full backprop)."""
    return _student(model, batch, passes, window, eviction).loss


def _student(model: nn.Module, batch: dict[str, torch.Tensor], passes: int, window: int, eviction: str):
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        passes=passes,
        window=window,
        eviction=eviction,
        use_cache=False,
    )


def distillation_loss(
    model: nn.Module,
    teacher: nn.Module,
    batch: dict[str, torch.Tensor],
    passes: int,
    window: int,
    eviction: str,
    *,
    weight: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """weight x KL(teacher || student) + (1 - weight) x CE, over the batch's target tokens."""
    output = _student(model, batch, passes, window, eviction)
    targets = batch["labels"][:, 1:] != -100  # column p predicts label p + 1
    wanted = targets.any(dim=0)  # the columns the student returns logits for, in order
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_teacher = torch.log_softmax(teacher_logits[:, :-1][:, wanted].float() / temperature, dim=-1)
    log_student = torch.log_softmax(output.logits.float() / temperature, dim=-1)
    per_token = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    mask = targets[:, wanted].to(per_token.dtype)
    kl = (per_token * mask).sum() / mask.sum().clamp(min=1) * temperature**2
    return kl if weight == 1 else weight * kl + (1 - weight) * output.loss


@torch.no_grad()
def frozen_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of the converted model's base as it is now: the distillation teacher."""
    import copy

    teacher = copy.deepcopy(model.base).eval()
    teacher.requires_grad_(False)
    return teacher

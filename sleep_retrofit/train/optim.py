"""Optimisers and the learning-rate schedule of the paper's recipe.

Muon (torch.optim.Muon) updates the 2-D weight matrices of the hidden layers; AdamW updates
everything else: embeddings and the output head (2-D, but not hidden-layer matrices: Muon's
orthogonalised update suits neither), norms, biases, gates (1-D) and convolution kernels
(3-D, which Muon refuses). Both run under one warmup + cosine schedule, as factors of their
own base rates (transformers' cosine schedule with a floor).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

__all__ = ["ParamGroups", "build_optimizers", "cosine_schedule", "split_parameters"]


class ParamGroups:
    """Trainable parameters split by optimiser: `muon` (hidden 2-D matrices) and `adamw` (the rest)."""

    def __init__(self, muon: list[nn.Parameter], adamw: list[nn.Parameter]):
        self.muon, self.adamw = muon, adamw


def split_parameters(model: nn.Module) -> ParamGroups:
    """Split the trainable parameters of `model` for Muon + AdamW (see the module docstring)."""
    embeddings = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            embeddings.add(id(module.weight))
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is not None and getattr(head, "weight", None) is not None:
        embeddings.add(id(head.weight))
    muon, adamw = [], []
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        hidden_matrix = param.ndim == 2 and id(param) not in embeddings and "lm_head" not in name
        (muon if hidden_matrix else adamw).append(param)
    return ParamGroups(muon, adamw)


def build_optimizers(
    parameters: Iterable[nn.Parameter] | nn.Module,
    *,
    optimizer: str = "muon",
    muon_lr: float = 2e-3,
    adamw_lr: float = 5e-5,
    weight_decay: float = 0.0,
) -> list[torch.optim.Optimizer]:
    """The optimisers of one stage: [Muon, AdamW] (either may be absent when it has no
    parameters) for ``optimizer="muon"``, [AdamW] over everything for ``"adamw"`` (at ``adamw_lr``).

    Raises:
        ValueError: when nothing is trainable or `optimizer` is unknown.
    """
    if optimizer not in ("muon", "adamw"):
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {optimizer!r}")
    if isinstance(parameters, nn.Module):
        groups = split_parameters(parameters)
    else:
        params = [p for p in parameters if p.requires_grad]
        groups = ParamGroups([p for p in params if p.ndim == 2], [p for p in params if p.ndim != 2])
    if not groups.muon and not groups.adamw:
        raise ValueError("no trainable parameters: nothing to optimise")
    if optimizer == "adamw":
        return [torch.optim.AdamW(groups.muon + groups.adamw, lr=adamw_lr, weight_decay=weight_decay)]
    optimizers: list[torch.optim.Optimizer] = []
    if groups.muon:
        optimizers.append(torch.optim.Muon(groups.muon, lr=muon_lr, weight_decay=weight_decay))
    if groups.adamw:
        optimizers.append(torch.optim.AdamW(groups.adamw, lr=adamw_lr, weight_decay=weight_decay))
    return optimizers


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' warm-up + cosine schedule: the rate rises linearly from 0 over `warmup_steps`
    optimiser steps, then follows a half cosine down to `min_lr_ratio` x the base rate at
    `total_steps`. Checked here so a bad stage config fails with its own message."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps, min_lr_rate=min_lr_ratio
    )

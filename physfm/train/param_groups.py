"""Optimiser parameter groups for a run that starts from pretrained weights (``physfm finetune``).

The parameters split in two parts:

* **new**: what pretraining never trained for this data: the dataset-conditioning table (its new
  dataset's row starts at the mean of the pretrained rows) and any parameter the pretrained state
  lacks (LoRA adapters). They learn at ``optim.lr`` with no weight decay (decaying a conditioning
  row or a zero-initialised adapter toward 0 has no meaning).
* **trunk**: every other trainable pretrained weight. It learns at ``optim.lr * trunk_lr_scale``
  (decay on 2-D weights, as in pretraining) and, for the first ``frozen_steps`` optimiser steps, not
  at all: its learning rate is 0 and its gradients are dropped before clipping, so the new parts
  first settle on the frozen function the trunk computes (a freshly initialised part's large early
  gradients would otherwise rewrite pretrained weights). Its warm-up and cosine decay start after
  the frozen steps.

The freeze is a learning-rate multiplier, not ``requires_grad``: DDP and DeepSpeed fix the set of
trainable parameters when they wrap the model, and the scheduler's step count, saved in every
checkpoint, makes a resumed run take up the same phase.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from physfm.train.config import lr_lambda

# Parameters always in the "new" part: the conditioning table that gets the new datasets' rows.
NEW_PREFIXES = ("dataset_embedding.",)


@dataclass(frozen=True)
class ParamPlan:
    """How a fine-tune's optimiser treats the new parts and the pretrained trunk."""

    new_names: frozenset[str]  # parameter names (as model.named_parameters gives them) that are new
    trunk_lr_scale: float = 1.0
    frozen_steps: int = 0

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        pretrained_keys: Iterable[str],
        trunk_lr_scale: float,
        frozen_steps: int,
    ) -> ParamPlan:
        """New = the conditioning table + every parameter the pretrained state lacks."""
        known = set(pretrained_keys)
        new = {
            name
            for name, _ in model.named_parameters()
            if name.startswith(NEW_PREFIXES) or name not in known
        }
        return cls(frozenset(new), trunk_lr_scale, frozen_steps)


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]], plan: ParamPlan | None, weight_decay: float
) -> list[dict]:
    """AdamW groups, each with a ``name`` and an ``lr_scale`` (its peak LR over ``optim.lr``).
    Without a plan: pretraining's two groups (decay on 2-D weights only), scale 1. Empty groups are
    left out."""
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if plan is None:
        buckets = {
            "decay": ([p for _, p in trainable if p.dim() >= 2], weight_decay, 1.0),
            "no_decay": ([p for _, p in trainable if p.dim() < 2], 0.0, 1.0),
        }
    else:
        new = [p for n, p in trainable if n in plan.new_names]
        trunk = [(n, p) for n, p in trainable if n not in plan.new_names]
        scale = plan.trunk_lr_scale
        buckets = {
            "new": (new, 0.0, 1.0),
            "trunk_decay": ([p for _, p in trunk if p.dim() >= 2], weight_decay, scale),
            "trunk_no_decay": ([p for _, p in trunk if p.dim() < 2], 0.0, scale),
        }
    return [
        {"params": params, "weight_decay": decay, "lr_scale": scale, "name": name}
        for name, (params, decay, scale) in buckets.items()
        if params
    ]


def group_lr_lambdas(
    groups: list[dict],
    plan: ParamPlan | None,
    warmup_steps: int,
    max_steps: int,
    min_lr_ratio: float,
) -> list[Callable[[int], float]]:
    """One LambdaLR multiplier per group: linear warm-up then cosine; the trunk's is 0 for the
    frozen steps and its schedule runs over the steps after them."""
    frozen = plan.frozen_steps if plan is not None else 0

    def new_part(step: int) -> float:
        return lr_lambda(step, warmup_steps, max_steps, min_lr_ratio)

    def trunk(step: int) -> float:
        if step < frozen:
            return 0.0
        return lr_lambda(step - frozen, warmup_steps, max(1, max_steps - frozen), min_lr_ratio)

    return [trunk if g["name"].startswith("trunk") else new_part for g in groups]


def drop_frozen_grads(optimizer: torch.optim.Optimizer, plan: ParamPlan | None, step: int) -> None:
    """During the frozen steps, the trunk's gradients go (before clipping and the optimiser step):
    the clip norm is the new parts' alone and AdamW neither moves nor keeps moments for the trunk,
    so its moments start fresh when it unfreezes."""
    if plan is None or step >= plan.frozen_steps:
        return
    for group in optimizer.param_groups:
        if str(group.get("name", "")).startswith("trunk"):
            for p in group["params"]:
                p.grad = None

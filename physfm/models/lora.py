"""Parameter-efficient fine-tuning of the AR transformer: freeze all but the last k blocks, or LoRA.

LoRA (Hu et al. 2021): each adapted linear computes ``W x + (alpha / r) B A x`` with ``W`` frozen,
``A`` [r, in] Gaussian and ``B`` [out, r] zero, so training starts exactly at the pretrained
function.

Why a small wrapper and not ``peft``: peft 0.21.2 installs beside torch 2.13 CPU without replacing
it, but pulls transformers, accelerate, huggingface_hub and tokenizers for a forty-line feature, and
its ``PeftModel`` renames every state-dict key (``base_model.model.…``), which breaks the
checkpoint, export, ZeRO-consolidation and rollout key contract. :class:`LoRALinear` subclasses
``nn.Linear``: the base weight keeps its key, adapters add ``lora_a``/``lora_b`` beside it, and
:func:`merge_lora_state` folds them back into a plain state dict that any loader reads.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from data_pipelines.config import ConfigError

# Linears adapted by default: attention projections and the SwiGLU MLP (all of each block's
# matmuls).
LORA_TARGETS = ("wqkv", "wo", "w_gate", "w_up", "w_down")
# Always trained when fine-tuning: new datasets need their conditioning row (only used rows get
# gradient).
ALWAYS_TRAINED = ("dataset_embedding",)


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a rank-``r`` update ``(alpha / r) B A``; the base weight/bias are
    frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        self.load_state_dict(base.state_dict())
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear and peft initialise A
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.scale * (
            self.lora_dropout(x) @ self.lora_a.T @ self.lora_b.T
        )


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: tuple[str, ...] = LORA_TARGETS,
) -> int:
    """Freeze ``model`` and replace the target linears inside its blocks by adapters; returns
    #adapted."""
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and type(child) is nn.Linear and name.startswith("blocks."):
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                adapted += 1
    if not adapted:
        raise ConfigError(
            f"finetune.mode=lora: no linear named {targets} inside the model's blocks"
        )
    _unfreeze(model, ALWAYS_TRAINED)
    return adapted


def freeze_all_but_last(model: nn.Module, k: int) -> None:
    """Train only the last ``k`` blocks, the final norm, the output head and the dataset
    embedding."""
    n_layer = len(model.blocks)
    if not 0 <= k <= n_layer:
        raise ConfigError(f"finetune.train_last_blocks: must be in 0..{n_layer}, got {k}")
    for p in model.parameters():
        p.requires_grad_(False)
    _unfreeze(
        model,
        (
            *(f"blocks.{i}." for i in range(n_layer - k, n_layer)),
            "norm.",
            "lm_head.",
            *ALWAYS_TRAINED,
        ),
    )


def _unfreeze(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(True)


def merge_lora_state(
    state: dict[str, torch.Tensor], alpha_over_rank: float
) -> dict[str, torch.Tensor]:
    """A LoRA state dict → plain keys: ``W + scale B A`` per adapted linear, adapter keys
    dropped."""
    merged = {k: v for k, v in state.items() if not k.endswith((".lora_a", ".lora_b"))}
    for key in state:
        if key.endswith(".lora_a"):
            prefix = key[: -len(".lora_a")]
            a, b = state[key].float(), state[prefix + ".lora_b"].float()
            weight = merged[prefix + ".weight"]
            merged[prefix + ".weight"] = (weight.float() + alpha_over_rank * b @ a).to(weight.dtype)
    return merged


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

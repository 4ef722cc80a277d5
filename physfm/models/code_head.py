"""The FSQ code's structure in the AR model's input and output (``model.head=digits``).

A token id is an FSQ code: ``d = len(levels)`` ordinal digits (mixed radix, digit 0 least
significant, as ``tokenizer/fsq.py`` numbers them), e.g. levels [8, 5, 5, 5] → 4 digits, 1,000 ids.
Treating the ids as 1,000 unrelated classes makes the model learn separately that code 517 is next
to 518; here

* the input embedding is the sum of one small table per digit (plus, with ``model.id_embedding``, a
  per-id table), so codes that share digits share their embedding;
* the head predicts each digit with its own softmax (sum(levels) = 23 logits instead of 1,000) and
  adds a copy bias ``-copy_gain * (k - k_in)^2`` that favours the input token's digit and its
  neighbours. The head's weights start at zero, so the untrained model predicts copy-tokens exactly
  and training moves the digits it learns to change;
* greedy decoding can take each digit's *expected* value under its softmax, rounded to the nearest
  level (``model.greedy=mean``): the MSE-optimal point forecast of each code value, kept on the code
  grid so a rollout still feeds ids back.

Hand-written: no library offers FSQ-factorised heads; the maths is a few lines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def digit_basis(levels: list[int]) -> list[int]:
    """Place value of each digit in the mixed-radix id: basis[i] = prod(levels[:i])."""
    return [math.prod(levels[:i]) for i in range(len(levels))]


def ids_to_digits(ids: Tensor, levels: list[int]) -> Tensor:
    """ids [...] → digits [..., d] (long), digit i in [0, levels[i])."""
    basis = torch.tensor(digit_basis(levels), device=ids.device)
    return (ids.long().unsqueeze(-1) // basis) % torch.tensor(levels, device=ids.device)


def digits_to_ids(digits: Tensor, levels: list[int]) -> Tensor:
    """digits [..., d] → ids [...]."""
    return (digits.long() * torch.tensor(digit_basis(levels), device=digits.device)).sum(-1)


def expected_digits(probs: list[Tensor]) -> Tensor:
    """Per-digit distributions (one [..., L_i] each) → each digit's expectation rounded to the
    nearest level [..., d]. The FSQ code value is affine in the digit, so this is the expected code,
    on the grid."""
    means = [(p * torch.arange(p.shape[-1], device=p.device, dtype=p.dtype)).sum(-1) for p in probs]
    return torch.stack(
        [m.round().long().clamp(0, p.shape[-1] - 1) for m, p in zip(means, probs)], -1
    )


def vocab_expected_ids(logits: Tensor, levels: list[int]) -> Tensor:
    """The one-softmax head's logits [N, V] → ids [N] of the expected code (each digit's mean,
    rounded)."""
    probs = logits.float().softmax(-1)
    # [V, d]
    digits = ids_to_digits(torch.arange(logits.shape[-1], device=logits.device), levels).float()
    means = probs @ digits  # [N, d]
    top = torch.tensor(levels, device=logits.device) - 1
    return digits_to_ids(torch.minimum(means.round().long().clamp(min=0), top), levels)


class CodeEmbedding(nn.Module):
    """ids [...] → [..., d_model]: the sum of one table per FSQ digit, plus a per-id table if
    asked."""

    def __init__(self, levels: list[int], d_model: int, id_table: bool):
        super().__init__()
        self.levels = list(levels)
        self.digits = nn.ModuleList(nn.Embedding(n, d_model) for n in self.levels)
        self.ids = nn.Embedding(math.prod(self.levels), d_model) if id_table else None

    def forward(self, ids: Tensor) -> Tensor:
        digits = ids_to_digits(ids, self.levels)
        x = sum(table(digits[..., i]) for i, table in enumerate(self.digits))
        return x if self.ids is None else x + self.ids(ids)


class DigitHead(nn.Module):
    """h [..., d_model] (+ input ids [...]) → per-digit logits concatenated [..., sum(levels)]."""

    def __init__(self, levels: list[int], d_model: int, copy_bias: bool):
        super().__init__()
        self.levels = list(levels)
        self.proj = nn.Linear(d_model, sum(self.levels), bias=False)
        # Strength of the pull towards the input token's digits; learned, one per digit.
        self.copy_gain = nn.Parameter(torch.full((len(self.levels),), 2.0)) if copy_bias else None

    def reset_parameters(self) -> None:
        """Zero projection: at init the logits are the copy bias alone, i.e. copy-tokens exactly."""
        nn.init.zeros_(self.proj.weight)
        if self.copy_gain is not None:
            nn.init.constant_(self.copy_gain, 2.0)

    def split(self, logits: Tensor) -> list[Tensor]:
        return list(logits.split(self.levels, dim=-1))

    def forward(self, h: Tensor, inputs: Tensor | None) -> Tensor:
        logits = self.proj(h)
        if self.copy_gain is None or inputs is None:
            return logits
        digits = ids_to_digits(inputs, self.levels)  # [..., d]
        parts = []
        for i, (part, n) in enumerate(zip(self.split(logits), self.levels)):
            dist = torch.arange(n, device=h.device) - digits[..., i : i + 1]  # [..., n]
            parts.append(part - self.copy_gain[i].to(part.dtype) * dist.to(part.dtype) ** 2)
        return torch.cat(parts, -1)

    def loss(self, logits: Tensor, targets: Tensor, code_weight: float = 0.0) -> Tensor:
        """Mean over tokens of the summed per-digit cross-entropy; ``code_weight`` adds the squared
        error of the expected code (each digit's mean, scaled to the FSQ code range [-1, 1])."""
        digits = ids_to_digits(targets, self.levels)
        parts = self.split(logits.float())
        loss = sum(F.cross_entropy(p, digits[:, i]) for i, p in enumerate(parts))
        if code_weight > 0:
            for i, (p, n) in enumerate(zip(parts, self.levels)):
                mean = (p.softmax(-1) * torch.arange(n, device=p.device)).sum(-1)
                loss = loss + code_weight * ((mean - digits[:, i]) / (n // 2)).pow(2).mean()
        return loss

    def sample(
        self,
        logits: Tensor,
        temperature: float,
        top_k: int | None,
        generator: torch.Generator | None,
        greedy: str = "mode",
    ) -> Tensor:
        """logits [N, sum(levels)] → ids [N]: per digit, greedy (``mode`` argmax or ``mean``
        expected level) at temperature 0, else softmax sampling (top-k per digit, optional)."""
        parts = [p.float() for p in self.split(logits)]
        if temperature <= 0:
            if greedy == "mean":
                return digits_to_ids(expected_digits([p.softmax(-1) for p in parts]), self.levels)
            return digits_to_ids(torch.stack([p.argmax(-1) for p in parts], -1), self.levels)
        out = []
        for p in parts:
            p = p / temperature
            if top_k is not None:
                kth = torch.topk(p, min(top_k, p.shape[-1]), dim=-1).values[:, -1:]
                p = p.masked_fill(p < kth, float("-inf"))
            out.append(torch.multinomial(p.softmax(-1), 1, generator=generator)[:, 0])
        return digits_to_ids(torch.stack(out, -1), self.levels)

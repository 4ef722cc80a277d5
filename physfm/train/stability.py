"""Rollout training for the next-frame AR model (the ``stability`` config section): inputs that look
like what a rollout feeds the model, with the true tokens kept as targets.

* pushforward (Brandstetter et al. 2022): a window's frames after the first change frame are
  replaced by the model's own greedy one-step predictions of them (from the true frames before each;
  no gradient through that step), so the model learns to continue from its own errors;
* code noise: a +-1 step on one random FSQ digit of some input tokens;
* shift (patch jittering, as Walrus): the whole window's token grid rolled by a random offset per
  axis, in steps that respect the system's symmetries.

With conditional tokens the swapped-in prediction is a change code relative to the *true* previous
frame, while a rollout re-encodes its own decoded frames; the pushforward here is that rollout's
approximation in code space (no tokenizer in the loop, so a step costs one extra no-gradient
forward).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from physfm.models.code_head import digits_to_ids, ids_to_digits


def shift_tokens(
    tokens: Tensor, steps: list[int], generator: torch.Generator | None = None
) -> Tensor:
    """tokens [B, F, *grid] → each window rolled by its own random multiple of ``steps[i]`` along
    spatial axis i (0: not along it; axes past ``steps`` are not rolled)."""
    out = torch.empty_like(tokens)
    grid = tokens.shape[2:]
    for b in range(tokens.shape[0]):
        offsets = [
            int(torch.randint(n // step, (1,), generator=generator)) * step if step else 0
            for n, step in zip(grid, list(steps) + [0] * len(grid))
        ]
        out[b] = tokens[b].roll(offsets, dims=tuple(range(1, tokens.ndim - 1)))
    return out


def code_noise(
    idx: Tensor,
    levels: list[int],
    prob: float,
    start: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """idx [B, L] ids → a copy where each token from position ``start`` on moves, with probability
    ``prob``, one random FSQ digit one level up or down (clamped to the digit's range)."""
    digits = ids_to_digits(idx[:, start:], levels)  # [B, L', d]
    hit = torch.rand(digits.shape[:-1], generator=generator, device=idx.device) < prob
    which = torch.randint(len(levels), digits.shape[:-1], generator=generator, device=idx.device)
    step = torch.randint(0, 2, digits.shape[:-1], generator=generator, device=idx.device) * 2 - 1
    delta = torch.nn.functional.one_hot(which, len(levels)) * (step * hit)[..., None]
    top = torch.tensor(levels, device=idx.device) - 1
    noisy = torch.minimum((digits + delta).clamp(min=0), top)
    out = idx.clone()
    out[:, start:] = digits_to_ids(noisy, levels)
    return out


@torch.no_grad()
def pushforward_inputs(
    model, idx: Tensor, grid: tuple[int, ...], dataset_ids: Tensor, first_frame: int, rows: Tensor
) -> Tensor:
    """idx [B, F*T] (next-frame mode) → a copy whose frames ``first_frame``.. of the windows
    selected by ``rows`` [B] bool are the model's greedy predictions of them from the true frames
    before each."""
    T = math.prod(grid)
    if not bool(rows.any()):
        return idx
    was_training = model.training
    model.eval()  # the prediction a rollout would make (no dropout)
    try:
        # [b, (F-1)*T, ...] predicts frames 1..F-1
        logits, _ = model(idx[rows], grid, dataset_ids[rows])
    finally:
        model.train(was_training)
    predicted = model.predict_ids(logits)  # [b, (F-1)*T]
    out = idx.clone()
    start = first_frame * T
    out[rows, start:] = predicted[:, start - T :]
    return out

"""Finite Scalar Quantisation (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple").

Each of the ``d = len(levels)`` latent channels is squashed to a bounded range and rounded to one of
``levels[i]`` values; the code is the tuple of rounded values and its integer id is the mixed-radix
number formed by them, so the implicit codebook has ``prod(levels)`` entries (``[8, 5, 5, 5]`` →
1,000 for the tiny tokenizer, ``[8, 8, 8, 5, 5, 5]`` → 64,000 as in Cosmos/PhysiX). There is no
learned codebook, no commitment loss and no codebook collapse, which is why FSQ suits a tokenizer
trained from scratch on a CPU.

Hand-written (~60 lines) rather than taken from ``vector-quantize-pytorch``: the maths is small and
fixed, it keeps the dependency list short, and the index layout — which token shards persist — stays
under this project's control rather than a third party's.
"""

from __future__ import annotations

import torch
from torch import nn

from data_pipelines.config import ConfigError


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through estimator)."""
    return z + (z.round() - z).detach()


class FSQ(nn.Module):
    """Quantise the last axis of ``z`` (size ``len(levels)``) onto the FSQ grid; codes lie in [-1,
    1]."""

    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__()
        if not levels or any(int(n) < 2 for n in levels):
            raise ConfigError(f"FSQ levels must be integers >= 2, got {levels}")
        self.levels_list = [int(n) for n in levels]
        self.eps = eps
        levels_t = torch.tensor(self.levels_list, dtype=torch.int64)
        # basis[i] = prod(levels[:i]): the place value of digit i in the mixed-radix code id.
        basis = torch.cumprod(torch.tensor([1] + self.levels_list[:-1], dtype=torch.int64), dim=0)
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels_list)

    @property
    def codebook_size(self) -> int:
        return int(torch.prod(torch.tensor(self.levels_list)).item())

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash ``z`` so that rounding yields exactly ``levels[i]`` values per channel.

        Even level counts have no centre value, so they are shifted by half a step (the paper's
        offset).
        """
        levels = self.levels.to(z.dtype)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` [..., d] → (codes [..., d] in [-1, 1] with straight-through gradients, ids [...]
        int64)."""
        if z.shape[-1] != self.dim:
            raise ValueError(
                f"FSQ expects last axis of size {self.dim}, got shape {tuple(z.shape)}"
            )
        # Quantise in float32: under bf16 autocast the rounding boundaries would shift.
        z32 = z.float()
        half_width = (self.levels // 2).to(z32.dtype)
        codes = round_ste(self.bound(z32)) / half_width
        return codes.to(z.dtype), self.codes_to_indices(codes)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., d] in [-1, 1] → integer ids [...] in [0, prod(levels))."""
        half_width = (self.levels // 2).to(codes.dtype)
        digits = (codes * half_width + half_width).round().long()  # [..., d] in [0, levels)
        return (digits * self.basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """integer ids [...] → codes [..., d] in [-1, 1] (float32)."""
        indices = indices.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"token ids must lie in [0, {self.codebook_size}), got range "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels  # [..., d]
        half_width = (self.levels // 2).float()
        return (digits.float() - half_width) / half_width

"""The tokenizer's continuous latents: what the diffusion model reads and writes instead of token
ids.

``Tokenizer.encode_latent`` returns the FSQ codes *after* rounding. The latent before quantisation
is the encoder's output squashed by ``FSQ.bound`` and divided by each level's half-width: the same
units as the codes (so the decoder takes it as is), but not yet rounded. Rounding it gives exactly
the tokenizer's codes, hence its token ids (:func:`snap_to_codes`, :func:`latent_ids`).

The tokenizer is read from outside (a forward hook on its ``to_code`` projection) so that it stays
unaware of this use.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def continuous_latents(tokenizer, fields: Tensor, dataset: str) -> Tensor:
    """z-scored fields [B, T, C, *space] → latents [B, T', *grid, D] in FSQ code units, before
    rounding."""
    captured: list[Tensor] = []
    handle = tokenizer.to_code.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        tokenizer.encode_latent(fields, dataset)
    finally:
        handle.remove()
    z = captured[-1].movedim(1, -1).float()  # [(B T'), *grid, D]
    fsq = tokenizer.fsq
    half_width = (fsq.levels // 2).to(z)
    return (fsq.bound(z) / half_width).unflatten(0, (fields.shape[0], -1))


def snap_to_codes(tokenizer, latents: Tensor) -> Tensor:
    """Round latents [..., D] to the nearest FSQ code (what the tokenizer itself would emit)."""
    fsq = tokenizer.fsq
    levels = fsq.levels.to(latents.device)
    half_width = (levels // 2).to(latents.dtype)
    digits = torch.minimum(
        torch.clamp((latents * half_width + half_width).round(), min=0), (levels - 1).to(latents)
    )
    return (digits - half_width) / half_width


def latent_ids(tokenizer, latents: Tensor) -> Tensor:
    """Token ids [...] of latents [..., D] after rounding."""
    return tokenizer.fsq.codes_to_indices(snap_to_codes(tokenizer, latents))

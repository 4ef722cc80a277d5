"""Inflate a tokenizer into more spatial dimensions (1D → 2D, 2D → 3D, 1D → 3D), I3D-style.

A pretrained 2D tokenizer becomes a 3D one whose weights are the 2D ones spread over the new axis,
so that a field that is constant along the new axes is coded exactly as the 2D tokenizer codes its
slice: the same token ids on every depth slice and the same reconstruction. Fine-tuning on 3D data
then starts from everything the 2D trunk learned instead of from random convolutions (Carreira &
Zisserman's I3D inflated ImageNet filters into video the same way).

New axes are appended after the old ones ((x, y) → (x, y, z)), as the 1D → 2D lift of
``physfm/train/finetune_data.py`` appends ``y``. Layer by layer, for ``e`` new axes:

* spatial convolutions ``[O, I, *k]`` (stems, heads, residual blocks, strided down-sampling,
  up-sampling): the kernel is repeated over the new axes and divided by their kernel extent
  ``k^e``, so on a field constant along them the new taps sum to the old kernel;
* the stem's patch embedding (space-to-depth, ``C * p^n`` inputs): each old input channel is spread
  over the ``p^e`` new sub-positions of its patch and divided by ``p^e`` (constant input: the
  sub-positions are equal and sum back to one);
* the head's depth-to-space outputs: each old output channel (and bias) is copied to every new
  sub-position, so the reconstruction is constant along the new axes too;
* pointwise convolutions (FSQ projections, the causal temporal convs, which are pointwise in space)
  have kernel extent 1: carried as they are; GroupNorms, FSQ levels and the datasets' channel names
  and normalisation stats are carried unchanged (a per-frame GroupNorm over a field constant along
  the new axes sees the same mean and variance).

Padding. The identity holds at the borders of the new axes only if the padding reproduces the
constant there: ``circular`` (the default, and what the built-in periodic systems use) and
``replicate`` do, so reproduction is exact (to float rounding) on every slice. With ``zeros`` the
slices near each end of a new axis see zeros beyond the border and differ, and a per-frame
GroupNorm (``model.norm: group``) pools them into every slice's statistics; without it the slices
out of the borders' receptive field are exact. PyTorch convolutions take one padding mode for all axes, and changing it would alter the
old axes too, so a zero-padded tokenizer is inflated as it is and the border error is left to
fine-tuning (tests/test_tokenizer_inflate.py checks where it is exact). Measured on the tiny
config's architecture (4x4 patches into width 32, no GroupNorm, residual convs random with std
0.05, 32 depth cells of a z-scored field): the outermost token slice keeps 67% of its codes and its
4 cells are off by 0.38 of the field's std (rms), 0.083 one token in, 0.017 two in, 0.005 inside.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from data_pipelines.config import ConfigError
from tokenizer.checkpoint import fingerprint, load_tokenizer, save_tokenizer
from tokenizer.model import Tokenizer

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _patch_roles(tok: Tokenizer) -> dict[str, str]:
    """Module name → "in" for the convs that read a space-to-depth patch, "out" for those that
    write a depth-to-space one (the stems' and heads' convolutions; see Tokenizer.add_dataset)."""
    roles = {f"stems.{key}.1": "in" for key in tok.stems}
    roles.update({f"heads.{key}.2": "out" for key in tok.heads})
    if tok.cfg.conditional:
        roles.update({f"cond_stems.{key}.1": "in" for key in tok.cond_stems})
    return roles


def _spread_kernel(weight: torch.Tensor, new_kernel: tuple[int, ...]) -> torch.Tensor:
    """[O, I, *k] → [O, I, *k, *new_kernel], divided by prod(new_kernel)."""
    expanded = weight.reshape(*weight.shape, *[1] * len(new_kernel))
    expanded = expanded.expand(*weight.shape, *new_kernel)
    return expanded / math.prod(new_kernel)


def _spread_patch(t: torch.Tensor, dim: int, old_sub: int, new_sub: int) -> torch.Tensor:
    """Channel axis ``dim`` of C * old_sub entries (c-major, as SpaceToDepth orders them) → C *
    old_sub * new_sub, each entry repeated over the new sub-positions (the least significant index,
    since the new axes come last)."""
    grouped = t.unflatten(dim, (-1, old_sub)).unsqueeze(dim + 2)
    shape = list(grouped.shape)
    shape[dim + 2] = new_sub
    return grouped.expand(shape).flatten(dim, dim + 2)


def inflate_tokenizer(tok: Tokenizer, n_spatial_dims: int) -> Tokenizer:
    """A new :class:`Tokenizer` of ``n_spatial_dims`` axes with ``tok``'s weights inflated (see the
    module docstring); ``tok`` is left untouched. Same device, dtype and train/eval mode."""
    old_n = tok.cfg.n_spatial_dims
    if not old_n < n_spatial_dims <= 3:
        raise ConfigError(
            f"model.n_spatial_dims: can inflate a {old_n}D tokenizer to {old_n + 1}..3 dimensions, "
            f"not {n_spatial_dims}"
        )
    extra, p = n_spatial_dims - old_n, tok.cfg.patch_size
    cfg = dataclasses.replace(tok.cfg, n_spatial_dims=n_spatial_dims)
    new = Tokenizer(cfg, copy.deepcopy(tok.datasets))
    reference = tok.to_code.weight
    new.to(device=reference.device, dtype=reference.dtype)
    new.train(tok.training)
    roles, new_modules = _patch_roles(tok), dict(new.named_modules())
    state = dict(tok.state_dict())  # norms, FSQ buffers: carried as they are
    for name, module in tok.named_modules():
        if not isinstance(module, _CONVS):
            continue
        target = new_modules[name]
        weight = _spread_kernel(module.weight.detach(), target.kernel_size[old_n:])
        bias = None if module.bias is None else module.bias.detach()
        if roles.get(name) == "in":
            weight = _spread_patch(weight, 1, p**old_n, p**extra) / p**extra
        elif roles.get(name) == "out":
            weight = _spread_patch(weight, 0, p**old_n, p**extra)
            bias = None if bias is None else _spread_patch(bias, 0, p**old_n, p**extra)
        state[f"{name}.weight"] = weight.contiguous()
        if bias is not None:
            state[f"{name}.bias"] = bias.clone()
    # strict: a layer this file does not know how to inflate fails here, not silently
    new.load_state_dict(state, strict=True)
    return new


def inflate_checkpoint(src: str | Path, dst: str | Path, n_spatial_dims: int) -> Path:
    """Inflate the tokenizer checkpoint (or run directory) ``src`` into a new checkpoint directory
    ``dst`` (same format, written atomically); its ``train`` record names the source."""
    tok = load_tokenizer(src)
    inflated = inflate_tokenizer(tok, n_spatial_dims)
    record = {
        "inflated_from": {
            "checkpoint": str(Path(src).resolve()),
            "fingerprint": fingerprint(tok),
            "n_spatial_dims": tok.cfg.n_spatial_dims,
        }
    }
    return save_tokenizer(inflated, dst, extra=record)

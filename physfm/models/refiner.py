"""Refinement module (PhysiX): a small conv U-Net that corrects the frames decoded from predicted
tokens.

A token model's frame is at best the tokenizer's reconstruction of the truth (the "ceiling"), and in
practice a decoded guess with quantisation blur and token errors. The refiner sees the decoded
prediction beside the last ``context_frames`` frames before it (all z-scored with the tokenizer's
stats) and regresses the true frame as a *residual*: ``refined = prediction + U-Net(...)``. Its
output head starts at zero, so an untrained refiner is the identity and refinement can only be
trained toward better, never start worse.

One code path for 1D/2D/3D (``ConvNd`` by ``n_spatial_dims``), per-dataset stems and heads around a
shared trunk (the tokenizer's layout: datasets differ in channel count). Training lives in
``physfm/train/refine.py``; rollout uses it through ``PhysicsModel.rollout(..., refine=True)``.

Files: ``refiner.safetensors`` (weights) and ``refiner.json`` (architecture, datasets, the sha256 of
the weights, and which AR model and tokenizer it was trained against). The JSON is written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines.atomic import atomic_write_text
from data_pipelines.config import ConfigError
from data_pipelines.errors import DataError, UnknownNameError
from physfm.core.checkpoint import atomic_file

WEIGHTS = "refiner.safetensors"
CONFIG = "refiner.json"
FORMAT = "physfm-refiner"


@dataclass
class RefinerConfig:
    """Architecture of the refinement U-Net."""

    width: int = 32  # channels at full resolution; doubled per level
    levels: int = 2  # down-sampling steps (the spatial shape must be divisible by 2**levels)
    # frames before the prediction fed beside it (gives the local time derivative)
    context_frames: int = 2
    # the built-in systems are periodic
    padding: Literal["zeros", "circular", "replicate"] = "circular"
    # The rollout step as one more input channel (1 / step, step 1 = the first predicted frame):
    # errors grow with the step, and a refiner fit to a mix of steps without knowing which one it
    # sees corrects the first frame as hard as the fourth. Refiners saved before this option load
    # with it off.
    step_input: bool = True

    def validate(self) -> None:
        if self.width < 8 or self.width % 8:
            raise ConfigError(f"model.width: must be a positive multiple of 8, got {self.width}")
        if not 0 <= self.levels <= 4:
            raise ConfigError(f"model.levels: must be 0..4, got {self.levels}")
        if self.context_frames < 0:
            raise ConfigError(f"model.context_frames: must be >= 0, got {self.context_frames}")


def _conv(n_dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n_dims]


def _key(dataset: str) -> str:
    return "ds_" + re.sub(r"[^0-9A-Za-z_]", "_", dataset)


class ResBlock(nn.Module):
    def __init__(self, n_dims: int, channels: int, padding: str):
        super().__init__()
        conv = _conv(n_dims)
        self.norm1, self.norm2 = nn.GroupNorm(8, channels), nn.GroupNorm(8, channels)
        self.conv1 = conv(channels, channels, 3, padding=1, padding_mode=padding)
        self.conv2 = conv(channels, channels, 3, padding=1, padding_mode=padding)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(h))))))


class Refiner(nn.Module):
    """(prediction [B, C, *space], context [B, K, C, *space]) → refined frame [B, C, *space]
    (z-scored)."""

    def __init__(self, cfg: RefinerConfig, n_spatial_dims: int, datasets: dict[str, list[str]]):
        super().__init__()
        cfg.validate()
        if n_spatial_dims not in (1, 2, 3):
            raise ConfigError(f"Refiner: n_spatial_dims must be 1, 2 or 3, got {n_spatial_dims}")
        self.cfg, self.n_spatial_dims = cfg, n_spatial_dims
        self.datasets = {name: list(channels) for name, channels in datasets.items()}
        n, conv, pad = n_spatial_dims, _conv(n_spatial_dims), cfg.padding
        widths = [cfg.width * 2**i for i in range(cfg.levels + 1)]
        self.stems = nn.ModuleDict(
            {
                _key(name): conv(
                    (cfg.context_frames + 1) * len(ch) + cfg.step_input,
                    widths[0],
                    3,
                    padding=1,
                    padding_mode=pad,
                )
                for name, ch in self.datasets.items()
            }
        )
        self.heads = nn.ModuleDict(
            {
                _key(name): conv(widths[0], len(ch), 3, padding=1, padding_mode=pad)
                for name, ch in self.datasets.items()
            }
        )
        # zero residual at init: the untrained refiner is the identity
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.enc = nn.ModuleList(ResBlock(n, w, pad) for w in widths[:-1])
        self.down = nn.ModuleList(
            conv(widths[i], widths[i + 1], 4, stride=2, padding=1, padding_mode=pad)
            for i in range(cfg.levels)
        )
        self.mid = ResBlock(n, widths[-1], pad)
        self.up = nn.ModuleList(
            conv(widths[i + 1], widths[i], 3, padding=1, padding_mode=pad)
            for i in reversed(range(cfg.levels))
        )
        self.merge = nn.ModuleList(
            conv(2 * widths[i], widths[i], 1) for i in reversed(range(cfg.levels))
        )
        self.dec = nn.ModuleList(ResBlock(n, widths[i], pad) for i in reversed(range(cfg.levels)))
        self.out_norm = nn.GroupNorm(8, widths[0])

    def _check(self, pred: torch.Tensor, context: torch.Tensor, dataset: str) -> None:
        if dataset not in self.datasets:
            raise UnknownNameError(
                f"dataset {dataset!r} is unknown to this refiner (knows: {', '.join(self.datasets)})"
            )
        C, n = len(self.datasets[dataset]), self.n_spatial_dims
        if pred.ndim != n + 2 or pred.shape[1] != C:
            raise DataError(
                f"refiner: prediction for {dataset!r} must be [B, {C}, *space] with {n} spatial axes, "
                f"got {tuple(pred.shape)}"
            )
        if context.shape[0] != pred.shape[0] or context.shape[2:] != pred.shape[1:]:
            raise ValueError(
                f"refiner: context {tuple(context.shape)} does not match prediction {tuple(pred.shape)}"
            )
        bad = [s for s in pred.shape[2:] if s % 2**self.cfg.levels]
        if bad:
            raise DataError(
                f"refiner: spatial shape {tuple(pred.shape[2:])} is not divisible by 2**levels = {2**self.cfg.levels}"
            )

    def forward(
        self, pred: torch.Tensor, context: torch.Tensor, dataset: str, step: torch.Tensor | int = 1
    ) -> torch.Tensor:
        """``step``: which rollout step ``pred`` is (1 = the first predicted frame), an int or [B]
        per sample; read only with ``step_input``."""
        self._check(pred, context, dataset)
        K = self.cfg.context_frames
        if K:
            if context.shape[1] == 0:  # no history at all: the prediction stands in for it
                context = pred[:, None]
            # short history: repeat its oldest frame (as the causal tokenizer pads)
            if context.shape[1] < K:
                context = torch.cat(
                    [context[:, :1].expand(-1, K - context.shape[1], *context.shape[2:]), context],
                    1,
                )
            x = torch.cat([pred, context[:, -K:].flatten(1, 2)], dim=1)  # [B, (K+1) C, *space]
        else:
            x = pred
        if self.cfg.step_input:
            step = torch.as_tensor(step, dtype=pred.dtype, device=pred.device).expand(pred.shape[0])
            if bool((step < 1).any()):
                raise ValueError(f"refiner: rollout steps count from 1, got {step.min().item()}")
            x = torch.cat(
                [x, (1.0 / step).view(-1, 1, *([1] * self.n_spatial_dims)).expand_as(pred[:, :1])],
                1,
            )
        h = self.stems[_key(dataset)](x)
        skips = []
        for block, down in zip(self.enc, self.down):
            h = block(h)
            skips.append(h)
            h = down(h)
        h = self.mid(h)
        for up, merge, block in zip(self.up, self.merge, self.dec):
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = block(merge(torch.cat([h, skips.pop()], dim=1)))
        return pred + self.heads[_key(dataset)](F.silu(self.out_norm(h)))


# ------------------------------------------------------------------------------------------ files
def state_sha256(module: nn.Module) -> str:
    """sha256 of a module's weights (safetensors bytes): identifies the exact model a refiner was
    fit to."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return hashlib.sha256(save(state)).hexdigest()


def save_refiner(
    refiner: Refiner, out_dir: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``refiner.safetensors`` then ``refiner.json`` (atomic each; the JSON holds the weights'
    sha256)."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in refiner.state_dict().items()}
    weights = save(state)
    with atomic_file(out_dir / WEIGHTS) as tmp:
        tmp.write_bytes(weights)
    meta = {
        "format": FORMAT,
        "version": 1,
        "model": dataclasses.asdict(refiner.cfg),
        "n_spatial_dims": refiner.n_spatial_dims,
        "datasets": refiner.datasets,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        **(extra or {}),
    }
    atomic_write_text(out_dir / CONFIG, json.dumps(meta, indent=1, sort_keys=True))
    return out_dir


def is_refiner_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()


def load_refiner(path: str | Path) -> tuple[Refiner, dict[str, Any]]:
    """(Refiner in eval mode, its refiner.json) from a directory written by :func:`save_refiner`."""
    from safetensors.torch import load

    path = Path(path)
    if not is_refiner_dir(path):
        raise DataError(
            f"{path}: not a refiner directory (expected {CONFIG} and {WEIGHTS}; make one with `physfm refine`)"
        )
    try:
        meta = json.loads((path / CONFIG).read_text())
    except ValueError as err:
        raise DataError(f"{path / CONFIG}: unreadable: {err}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path / CONFIG}: not a physfm refiner config (format != {FORMAT!r})")
    weights = (path / WEIGHTS).read_bytes()
    if hashlib.sha256(weights).hexdigest() != meta.get("weights_sha256"):
        raise DataError(
            f"{path / WEIGHTS}: does not match {CONFIG} (interrupted save?); run `physfm refine` again"
        )
    fields = {f.name for f in dataclasses.fields(RefinerConfig)}
    # refiners saved before the option had no step channel
    saved = {"step_input": False, **meta["model"]}
    refiner = Refiner(
        RefinerConfig(**{k: v for k, v in saved.items() if k in fields}),
        int(meta["n_spatial_dims"]),
        meta["datasets"],
    )
    try:
        refiner.load_state_dict(load(weights), strict=True)
    except RuntimeError as err:
        raise DataError(
            f"{path / WEIGHTS}: weights do not match {CONFIG}: {str(err).splitlines()[0]}"
        ) from None
    return refiner.eval(), meta

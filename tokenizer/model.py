"""Spatiotemporal FSQ tokenizer: causal-in-time conv encoder → FSQ → conv decoder, for 1D, 2D and 3D
fields.

Layout. A window of ``T`` frames ``[B, T, C, *space]`` becomes a grid of integer tokens ``[B, T',
*space']`` with ``space' = space / spatial_compression`` per axis and, following Cosmos' causal
video tokenizer, ``T' = 1 + ceil((T - 1) / temporal_compression)``: frame 0 gets its own token
group, then each group of ``temporal_compression`` frames shares one (5 frames at 4x → 2 groups).
Token group ``j`` depends only on frames ``<= j * temporal_compression`` (causal), so an
autoregressive model over token groups never sees the future through the tokenizer. The decoder is
causal in the same sense.

One code path for 1D/2D/3D. Activations are kept frame-major, ``[(B T), C, *space]``, so every
spatial operation is a plain ``ConvNd`` picked by ``n_spatial_dims`` with time folded into the
batch. Mixing in time is a *causal temporal conv*: a pointwise ``ConvNd`` applied to the
concatenation of the current frame and the ``k - 1`` previous frames (the first frame is replicated
as left padding) — a (2+1)D factorised conv that needs no permutes and no Conv4d for 3D data. The
stem first folds ``patch_size``^n pixel patches into channels (space-to-depth, as Cosmos
patchifies), then strided convs halve the resolution until the spatial compression is reached; the
tiny CPU model patchifies straight to the token grid. Optional normalisation is per frame (GroupNorm
over one frame), since statistics pooled over time would leak future frames into the past.

Heterogeneous datasets: per-dataset stems and heads around one shared trunk (the PhysiX approach of
per-dataset decoders, without its channel-union slots). Each dataset — a name plus its ordered
channel names — gets its own input projection ``C_ds → width`` and output head ``width → C_ds``; the
trunk (encoder body, FSQ projection, decoder body) and hence the token vocabulary are shared. We
chose this over a channel-union input (PhysiX) because the union grows with every dataset and forces
a retrain of the input layer, and over per-field embeddings (MPP/Walrus) because heads keep the
trunk a plain conv net at any channel count. Adding a dataset later is ``add_dataset(name,
channel_names)`` then training only its new stem/head with ``freeze_trunk()``: the other datasets'
stems, heads and the trunk stay bit-identical, so their tokens and reconstructions are unchanged.

Conditional (predictive) tokens, ``model.conditional: true`` (needs ``temporal_compression == 1``
and ``temporal_kernel == 1``). Most of a physical frame is already known from the previous one, so a
plain tokenizer that codes each frame whole spends its ~10 bits per token on what did not change. A
conditional tokenizer codes frame ``t`` *given the previous frame* ``x_{t-1}`` in continuous space:

* frame 0 of a window is a **key frame**, coded on its own: the same network with ``prev = 0`` and a
  key-frame indicator channel set to 1;
* frame ``t > 0``: the encoder sees ``(x_t, x_{t-1})``; the decoder sees ``(codes_t, x_{t-1})`` and
  outputs ``x_{t-1} + f(codes_t, x_{t-1}) - f(zero_codes, x_{t-1})``, where ``f`` is the decoder
  network and ``zero_codes`` the FSQ code whose every value is 0 (id :attr:`Tokenizer.no_change_id`;
  for [8,5,5,5] digits [4,2,2,2]). A frame of all "no change" tokens therefore decodes to
  ``x_{t-1}`` exactly: by the subtraction (both terms are one batched pass over identical inputs)
  and, so that no backend's rounding can break it, by an explicit check that returns ``prev`` itself
  for such frames. The subtraction also gives a locally zero token the meaning "little change here",
  which the AR model can learn to use.

Frames are coded independently given their predecessor (no temporal mixing inside the codec), so one
frame decodes from its tokens and the previous frame alone — what a rollout needs. Shapes (``grid``
= ``space / spatial_compression``; fields z-scored, see :meth:`Tokenizer.normalize`):

* ``encode(x, ds)``: ``x [B, T, C, *space]`` → ids ``[B, T, *grid]``; frame 0 key-coded, frame ``t >
  0`` coded given the TRUE ``x_{t-1}`` (open loop: each frame's tokens are the target of a one-step
  forecast from the true state). ``encode(x, ds, closed_loop=True)`` codes frame ``t`` given the
  *decoded* frame ``t-1`` instead, so ``decode(ids)`` of a whole window does not drift (token shards
  for re-decoding).
* ``decode(ids, ds, prev=None)``: ids ``[B, T, *grid]`` → ``[B, T, C, *space]``. ``prev=None``:
  frame 0 is decoded as a key frame; else ``prev [B, C, *space]`` is the last known frame and every
  frame is conditional. Each decoded frame is the next frame's ``prev`` (closed loop).
* ``decode_step(ids_t, prev, ds)``: ids ``[B, *grid]``, prev ``[B, C, *space]`` (``None`` = key
  frame) → ``[B, C, *space]``.
* ``forward(x, ds)``: teacher-forced reconstruction (frame ``t`` decoded given the true ``x_{t-1}``)
  and ids; what training and ``tokenizer eval`` use — the ceiling of a forecaster that predicts one
  frame's tokens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines.clips import WindowSpec
from data_pipelines.config import ConfigError
from data_pipelines.errors import DataError, UnknownNameError
from data_pipelines.manifest import TokenLayout
from tokenizer.fsq import FSQ
from tokenizer.metrics import vrmse


@dataclass
class TokenizerConfig:
    """Architecture of the tokenizer (saved next to its weights)."""

    n_spatial_dims: int = 2  # 1, 2 or 3; 0 = take it from the training data
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # FSQ levels; codebook = prod
    spatial_compression: int = 4  # per axis: 4, 8 or 16 (any power of two >= 2 works)
    # space-to-depth at the stem (Cosmos patchifies too): convs start at 1/patch res
    patch_size: int = 4
    temporal_compression: int = 1  # 1, 2 or 4 (causal, Cosmos-style: 1 + (T-1)/c groups)
    width: int = 32  # channels at full resolution; doubled at each downsampling ...
    max_width: int = 128  # ... up to this cap
    blocks_per_level: int = 1  # residual blocks at each resolution, encoder and decoder each
    mid_blocks: int = 2  # residual blocks at the latent resolution
    # frames seen by each causal temporal conv; 1 = frames coded independently
    temporal_kernel: int = 3
    padding: Literal["zeros", "circular", "replicate"] = "circular"  # spatial boundary handling
    # per-frame GroupNorm (configs/tokenizer/tiny.yaml turns it off)
    norm: Literal["group", "none"] = "group"
    # code frame t given frame t-1 (key frame first); see the module docstring
    conditional: bool = False
    # conditional only: at encode time a token keeps "no change" where that reconstructs its patch
    # better than the encoder's code, and a frame is never coded worse than repeating the last one
    # (a video codec's skip mode; see the module docstring). Training is unchanged.
    skip_coding: bool = False

    def validate(self) -> None:
        if self.n_spatial_dims not in (0, 1, 2, 3):
            raise ConfigError(
                f"model.n_spatial_dims: must be 1, 2, 3 (or 0 = from data), got {self.n_spatial_dims}"
            )
        if not self.levels or any(n < 2 for n in self.levels):
            raise ConfigError(f"model.levels: every FSQ level must be >= 2, got {self.levels}")
        for key in ("spatial_compression", "temporal_compression"):
            value = getattr(self, key)
            if value < 1 or value & (value - 1):
                raise ConfigError(f"model.{key}: must be a power of two, got {value}")
        if self.conditional and self.temporal_compression != 1:
            raise ConfigError(
                f"model.conditional: needs model.temporal_compression = 1 (one token frame per field frame, "
                f"each coded given the previous one), got {self.temporal_compression}"
            )
        if self.skip_coding and not self.conditional:
            raise ConfigError(
                "model.skip_coding: needs model.conditional = true (only a conditional tokenizer has a "
                "no-change code)"
            )
        if self.conditional and self.temporal_kernel != 1:
            raise ConfigError(
                f"model.temporal_kernel: a conditional tokenizer codes each frame from itself and the previous "
                f"frame only (so a rollout can decode one frame at a time); set it to 1, got {self.temporal_kernel}"
            )

        if self.spatial_compression < 2:
            raise ConfigError("model.spatial_compression: must be >= 2")
        if (
            self.patch_size < 1
            or self.patch_size & (self.patch_size - 1)
            or self.patch_size > self.spatial_compression
        ):
            raise ConfigError(
                f"model.patch_size: must be a power of two <= spatial_compression, got {self.patch_size}"
            )
        if (
            self.temporal_compression > 1
            and self.temporal_compression > self.spatial_compression // self.patch_size
        ):
            raise ConfigError(
                "model.temporal_compression: needs as many strided levels as "
                "log2(spatial_compression / patch_size); lower patch_size"
            )
        if self.width < 1 or self.max_width < self.width:
            raise ConfigError(
                f"model.width/max_width: need 1 <= width <= max_width, got {self.width}/{self.max_width}"
            )
        if self.temporal_kernel < 1:
            raise ConfigError(f"model.temporal_kernel: must be >= 1, got {self.temporal_kernel}")

    @property
    def n_levels(self) -> int:
        return int(math.log2(self.spatial_compression // self.patch_size))

    @property
    def widths(self) -> list[int]:
        return [min(self.width * 2**i, self.max_width) for i in range(self.n_levels + 1)]

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)


# ---------------------------------------------------------------------- field frames <-> token
# frames The one place this arithmetic is written: every stage that maps a window between field
# frames and token frames (pretraining layouts, rollouts, fine-tuning) calls these.


def token_frames(n_frames: int, temporal_compression: int) -> int:
    """Token frames that code ``n_frames`` field frames: frame 0 alone, then one per group of c."""
    return 1 + math.ceil((n_frames - 1) / temporal_compression)


def field_frames(n_token_frames: int, temporal_compression: int) -> int:
    """Field frames that ``n_token_frames`` token frames decode to (whole groups)."""
    return 1 + temporal_compression * (n_token_frames - 1)


def future_token_frames(horizon: int, temporal_compression: int) -> int:
    """Token frames that code ``horizon`` field frames following a whole group (a rollout's new
    frames)."""
    return math.ceil(horizon / temporal_compression)


def window_token_layout(
    spec: WindowSpec, temporal_compression: int, grid: tuple[int, ...] | None = None
) -> TokenLayout | None:
    """The token layout of a window, or None when its context does not end on a group boundary
    (n_input = 1 + k * c): a model could not tell where the context stops inside a token frame."""
    if (spec.n_input - 1) % temporal_compression:
        return None
    return TokenLayout(
        token_frames(spec.n_input, temporal_compression),
        token_frames(spec.length, temporal_compression),
        grid,
    )


@dataclass
class DatasetSpec:
    """What the tokenizer knows of one dataset: its channel order and the z-score stats it was
    trained with."""

    channel_names: list[str]
    mean: list[float] | None = None  # per channel, physical units
    std: list[float] | None = None

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)


def conv_nd(n_dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n_dims]


def group_norm(channels: int, kind: str) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    # per sample of [(B T), C, *space] = per frame
    return nn.GroupNorm(math.gcd(8, channels), channels)


class SpaceToDepth(nn.Module):
    """[N, C, *space] → [N, C * p^n, *space / p]: each p^n patch becomes channels (lossless, no
    weights)."""

    def __init__(self, n_dims: int, patch: int):
        super().__init__()
        self.n, self.p = n_dims, patch

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.p == 1:
            return h
        N, C, *space = h.shape
        split = [d for s in space for d in (s // self.p, self.p)]  # [N, C, s1/p, p, s2/p, p, ...]
        h = h.reshape(N, C, *split)
        order = [0, 1, *(3 + 2 * i for i in range(self.n)), *(2 + 2 * i for i in range(self.n))]
        return h.permute(order).reshape(N, C * self.p**self.n, *(s // self.p for s in space))


class DepthToSpace(nn.Module):
    """Inverse of :class:`SpaceToDepth`."""

    def __init__(self, n_dims: int, patch: int):
        super().__init__()
        self.n, self.p = n_dims, patch

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.p == 1:
            return h
        N, Cp, *space = h.shape
        C = Cp // self.p**self.n
        h = h.reshape(N, C, *([self.p] * self.n), *space)  # [N, C, p, p, ..., s1, s2, ...]
        order = [0, 1, *(d for i in range(self.n) for d in (2 + self.n + i, 2 + i))]
        return h.permute(order).reshape(N, C, *(s * self.p for s in space))


class CausalTemporalConv(nn.Module):
    """y[t] = W · concat(x[t-k+1], ..., x[t]) with the first frame replicated as left padding.

    Input and output are frame-major ``[(B T), C, *space]``. ``stride=2`` keeps frames 0, 2, 4, ...
    so ``T → 1 + (T-1)/2`` and output ``j`` sees input frames ``<= 2j`` (needs odd ``T``).
    """

    def __init__(self, n_dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.proj = conv_nd(n_dims)(kernel * c_in, c_out, kernel_size=1)

    def forward(self, h: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, int]:
        x = h.unflatten(0, (-1, n_frames))  # [B, T, C, *space]
        pad = x[:, :1].expand(-1, self.kernel - 1, *x.shape[2:])
        xp = torch.cat([pad, x], dim=1)  # [B, T+k-1, C, *space]
        keep = slice(0, n_frames, self.stride)
        # oldest → current frame
        taps = [xp[:, j : j + n_frames][:, keep] for j in range(self.kernel)]
        stacked = torch.cat(taps, dim=2)  # [B, T_out, k*C, *space]
        n_out = stacked.shape[1]
        return self.proj(stacked.flatten(0, 1)), n_out


class ResBlock(nn.Module):
    """Pre-norm residual block: spatial conv → causal temporal mix → spatial conv."""

    def __init__(self, cfg: TokenizerConfig, n_dims: int, channels: int):
        super().__init__()
        conv = conv_nd(n_dims)
        self.norm1 = group_norm(channels, cfg.norm)
        self.conv1 = conv(channels, channels, 3, padding=1, padding_mode=cfg.padding)
        self.temporal = (
            CausalTemporalConv(n_dims, channels, channels, cfg.temporal_kernel)
            if cfg.temporal_kernel > 1
            else None
        )
        self.norm2 = group_norm(channels, cfg.norm)
        self.conv2 = conv(channels, channels, 3, padding=1, padding_mode=cfg.padding)
        # each block starts as the identity: stable deep residual stacks
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor, n_frames: int) -> torch.Tensor:
        y = self.conv1(F.silu(self.norm1(h)))
        if self.temporal is not None:
            y = y + self.temporal(F.silu(y), n_frames)[0]
        y = self.conv2(F.silu(self.norm2(y)))
        return h + y


def _dataset_key(name: str) -> str:
    """Module-dict key for a dataset name (ModuleDict keys may not contain dots)."""
    return "ds_" + re.sub(r"[^0-9A-Za-z_]", "_", name)


class Tokenizer(nn.Module):
    """Per-dataset stems/heads + shared causal encoder/decoder trunk + FSQ. See the module
    docstring."""

    def __init__(self, cfg: TokenizerConfig, datasets: dict[str, DatasetSpec] | None = None):
        super().__init__()
        cfg.validate()
        if cfg.n_spatial_dims not in (1, 2, 3):
            raise ConfigError(f"Tokenizer needs n_spatial_dims in 1..3, got {cfg.n_spatial_dims}")
        self.cfg = cfg
        n, widths, conv = cfg.n_spatial_dims, cfg.widths, conv_nd(cfg.n_spatial_dims)
        n_time_down = int(math.log2(cfg.temporal_compression))
        # Temporal down/up-sampling happens at the coarsest levels, where activations are smallest.
        self.time_levels = set(range(cfg.n_levels - n_time_down, cfg.n_levels))

        self.datasets: dict[str, DatasetSpec] = {}
        self.stems = nn.ModuleDict()  # per dataset: C_ds → widths[0]
        self.heads = nn.ModuleDict()  # per dataset: widths[0] → C_ds

        # ---- shared trunk: encoder ----
        self.enc_blocks = nn.ModuleList()
        self.enc_down = nn.ModuleList()
        self.enc_time_down = nn.ModuleDict()
        for i in range(cfg.n_levels):
            self.enc_blocks.append(
                nn.ModuleList(ResBlock(cfg, n, widths[i]) for _ in range(cfg.blocks_per_level))
            )
            self.enc_down.append(
                conv(widths[i], widths[i + 1], 4, stride=2, padding=1, padding_mode=cfg.padding)
            )
            if i in self.time_levels:
                self.enc_time_down[str(i)] = CausalTemporalConv(
                    n, widths[i + 1], widths[i + 1], 3, stride=2
                )
        self.enc_mid = nn.ModuleList(ResBlock(cfg, n, widths[-1]) for _ in range(cfg.mid_blocks))
        self.enc_norm = group_norm(widths[-1], cfg.norm)
        self.to_code = conv(widths[-1], len(cfg.levels), 1)
        self.fsq = FSQ(cfg.levels)
        # ---- shared trunk: decoder ----
        self.from_code = conv(len(cfg.levels), widths[-1], 1)
        self.dec_mid = nn.ModuleList(ResBlock(cfg, n, widths[-1]) for _ in range(cfg.mid_blocks))
        self.dec_time_up = nn.ModuleDict()
        self.dec_up = nn.ModuleList()
        self.dec_blocks = nn.ModuleList()
        for i in reversed(range(cfg.n_levels)):
            if i in self.time_levels:
                self.dec_time_up[str(i)] = CausalTemporalConv(n, widths[i + 1], widths[i + 1], 3)
            self.dec_up.append(
                conv(widths[i + 1], widths[i], 3, padding=1, padding_mode=cfg.padding)
            )
            self.dec_blocks.append(
                nn.ModuleList(ResBlock(cfg, n, widths[i]) for _ in range(cfg.blocks_per_level))
            )
        # ---- conditional models: the previous frame's features for the decoder ----
        if cfg.conditional:
            # per dataset: (prev, key flag) → widths[0] at the stem resolution
            self.cond_stems = nn.ModuleDict()
            # shared: down to the token grid, where they join the codes
            self.cond_down = nn.ModuleList(
                conv(widths[i], widths[i + 1], 4, stride=2, padding=1, padding_mode=cfg.padding)
                for i in range(cfg.n_levels)
            )

        for name, spec in (datasets or {}).items():
            self.add_dataset(name, spec.channel_names, mean=spec.mean, std=spec.std)

    # ------------------------------------------------------------------ datasets and freezing
    def add_dataset(
        self,
        name: str,
        channel_names: list[str],
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        """Register a dataset: a fresh stem and head sized to its channels (trunk untouched)."""
        key = _dataset_key(name)
        if name in self.datasets:
            raise DataError(f"dataset {name!r} is already registered with this tokenizer")
        if key in self.stems:
            raise DataError(
                f"dataset name {name!r} collides with another registered name after sanitising"
            )
        if not channel_names:
            raise DataError(f"dataset {name!r}: needs at least one channel")
        for label, stats in (("mean", mean), ("std", std)):
            if stats is not None and len(stats) != len(channel_names):
                raise DataError(
                    f"dataset {name!r}: {label} has {len(stats)} values for {len(channel_names)} channels"
                )
        cfg, n, w0 = self.cfg, self.cfg.n_spatial_dims, self.cfg.widths[0]
        conv, c_patch = conv_nd(n), len(channel_names) * cfg.patch_size**n
        device = self.to_code.weight.device
        # A conditional encoder sees (x_t, x_{t-1}, key flag): 2 C + 1 channels.
        c_in = (2 * len(channel_names) + 1) * cfg.patch_size**n if cfg.conditional else c_patch
        self.stems[key] = nn.Sequential(
            SpaceToDepth(n, cfg.patch_size), conv(c_in, w0, 3, padding=1, padding_mode=cfg.padding)
        ).to(device)
        self.heads[key] = nn.Sequential(
            group_norm(w0, cfg.norm),
            nn.SiLU(),
            conv(w0, c_patch, 3, padding=1, padding_mode=cfg.padding),
            DepthToSpace(n, cfg.patch_size),
        ).to(device)
        if cfg.conditional:
            c_cond = (len(channel_names) + 1) * cfg.patch_size**n  # (x_{t-1}, key flag)
            self.cond_stems[key] = nn.Sequential(
                SpaceToDepth(n, cfg.patch_size),
                conv(c_cond, w0, 3, padding=1, padding_mode=cfg.padding),
            ).to(device)
        self.datasets[name] = DatasetSpec(
            list(channel_names),
            None if mean is None else list(mean),
            None if std is None else list(std),
        )

    def dataset_parameters(self, name: str) -> list[nn.Parameter]:
        key = self._key(name)
        cond = [*self.cond_stems[key].parameters()] if self.cfg.conditional else []
        return [*self.stems[key].parameters(), *self.heads[key].parameters(), *cond]

    def trunk_parameters(self) -> list[nn.Parameter]:
        cond = [*self.cond_stems.parameters()] if self.cfg.conditional else []
        per_dataset = {id(p) for p in [*self.stems.parameters(), *self.heads.parameters(), *cond]}
        return [p for p in self.parameters() if id(p) not in per_dataset]

    def freeze_trunk(self, frozen: bool = True) -> None:
        """Stop (or restart) gradients to the shared trunk; per-dataset stems/heads stay
        trainable."""
        for p in self.trunk_parameters():
            p.requires_grad_(not frozen)

    def freeze_datasets(self, names: list[str]) -> None:
        """Freeze the stems/heads of ``names`` (e.g. all previously trained datasets)."""
        for name in names:
            for p in self.dataset_parameters(name):
                p.requires_grad_(False)

    def _key(self, name: str) -> str:
        if name not in self.datasets:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise UnknownNameError(
                f"dataset {name!r} is not known to this tokenizer (known: {known}); add_dataset() it first"
            )
        return _dataset_key(name)

    # ------------------------------------------------------------------ shapes
    def token_grid(self, n_frames: int, spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Token grid [T', *space'] for a window of ``n_frames`` frames of ``spatial_shape``."""
        cs = self.cfg.spatial_compression
        return (
            token_frames(n_frames, self.cfg.temporal_compression),
            *(s // cs for s in spatial_shape),
        )

    def token_layout(
        self, spec: WindowSpec, spatial_shapes: list[tuple[int, ...]]
    ) -> TokenLayout | None:
        """The token layout of ``spec`` windows over datasets of these grids (see
        :func:`window_token_layout`); its spatial grid is set when every dataset shares one."""
        grids = {self.token_grid(spec.length, shape)[1:] for shape in spatial_shapes}
        return window_token_layout(
            spec, self.cfg.temporal_compression, grids.pop() if len(grids) == 1 else None
        )

    def n_frames_decoded(self, n_groups: int) -> int:
        return field_frames(n_groups, self.cfg.temporal_compression)

    def _check_input(self, x: torch.Tensor, dataset: str) -> None:
        self._key(dataset)
        spec, n = self.datasets[dataset], self.cfg.n_spatial_dims
        if x.ndim != n + 3:
            raise DataError(
                f"dataset {dataset!r}: expected [B, T, C, *space] with {n} spatial axes, got {tuple(x.shape)}"
            )
        if x.shape[2] != spec.n_channels:
            raise DataError(
                f"dataset {dataset!r}: expected {spec.n_channels} channels {spec.channel_names}, got {x.shape[2]}"
            )
        bad = [s for s in x.shape[3:] if s % self.cfg.spatial_compression]
        if bad:
            raise DataError(
                f"dataset {dataset!r}: spatial shape {tuple(x.shape[3:])} is not divisible by the spatial "
                f"compression {self.cfg.spatial_compression}"
            )

    # ------------------------------------------------------------------ encode / decode
    def encode_latent(self, x: torch.Tensor, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C, *space] (z-scored) → (codes [B, T', *space', d] with STE grads, ids [B, T',
        *space'])."""
        self._check_input(x, dataset)
        if self.cfg.conditional:
            return self._encode_conditional(x, dataset)
        B, T = x.shape[:2]
        ct = self.cfg.temporal_compression
        t_pad = field_frames(token_frames(T, ct), ct)
        # pad at the end (replicating the last frame) so that (T-1) divides; stays causal
        if t_pad > T:
            x = torch.cat([x, x[:, -1:].expand(-1, t_pad - T, *x.shape[2:])], dim=1)
        # [(B T), w0, *space]
        h, n_frames = self.stems[_dataset_key(dataset)](x.flatten(0, 1)), t_pad
        for i in range(self.cfg.n_levels):
            for block in self.enc_blocks[i]:
                h = block(h, n_frames)
            h = self.enc_down[i](h)
            if str(i) in self.enc_time_down:
                h, n_frames = self.enc_time_down[str(i)](h, n_frames)
        for block in self.enc_mid:
            h = block(h, n_frames)
        z = self.to_code(F.silu(self.enc_norm(h)))  # [(B T'), d, *space']
        codes, ids = self.fsq(z.movedim(1, -1))
        return codes.unflatten(0, (B, n_frames)), ids.unflatten(0, (B, n_frames))

    def decode_codes(
        self,
        codes: torch.Tensor,
        dataset: str,
        n_frames: int | None = None,
        prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """codes [B, T', *space', d] → fields [B, T, C, *space] (z-scored); T = n_frames or 1 + ct
        (T'-1). Codes need not lie on the FSQ grid (continuous latents in code units decode too).

        Conditional (closed loop, as :meth:`decode`): ``prev`` None → frame 0 is a key frame; else
        ``prev [B, C, *space]`` is the last known frame; each output frame is the next one's prev.
        """
        if self.cfg.conditional:
            frames = []
            for t in range(codes.shape[1] if n_frames is None else min(n_frames, codes.shape[1])):
                prev = self.decode_code_step(codes[:, t], prev, dataset)
                frames.append(prev)
            return torch.stack(frames, dim=1)
        if prev is not None:
            raise ValueError(
                "prev= is for conditional tokenizers (model.conditional); this one is plain"
            )
        key = self._key(dataset)
        B, n_groups = codes.shape[:2]
        h = self.from_code(codes.flatten(0, 1).movedim(-1, 1))  # [(B T'), w, *space']
        t = n_groups
        for block in self.dec_mid:
            h = block(h, t)
        for step, i in enumerate(reversed(range(self.cfg.n_levels))):
            if str(i) in self.dec_time_up:
                # Causal upsampling T' → 2T' - 1: group 0 → frame 0, group j → frames 2j-1, 2j.
                x = h.unflatten(0, (B, t)).repeat_interleave(2, dim=1)[:, 1:]
                t = x.shape[1]
                h, _ = self.dec_time_up[str(i)](x.flatten(0, 1), t)
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = self.dec_up[step](h)
            for block in self.dec_blocks[step]:
                h = block(h, t)
        out = self.heads[key](h).unflatten(0, (B, t))  # [B, T_pad, C, *space]
        return out if n_frames is None else out[:, :n_frames]

    @torch.no_grad()
    def encode(self, x: torch.Tensor, dataset: str, closed_loop: bool = False) -> torch.Tensor:
        """x [B, T, C, *space] (z-scored) → token ids [B, T', *space'] (int64).

        Conditional: T' = T, frame 0 key-coded, frame t > 0 coded given the true x_{t-1} (open
        loop), or, with ``closed_loop``, given the *decoded* frame t-1 (as a video codec does), so
        the tokens also correct the error decoding has accumulated and ``decode(ids)`` does not
        drift.
        """
        if not closed_loop:
            if not self.cfg.skip_coding:
                return self.encode_latent(x, dataset)[1]
            self._check_input(x, dataset)
            prev, key = self._previous(x)
            ids = self._code_frames(x.flatten(0, 1), prev.flatten(0, 1), key.flatten(), dataset)
            return ids.unflatten(0, x.shape[:2])
        if not self.cfg.conditional:
            raise ValueError(
                "closed_loop= is for conditional tokenizers (model.conditional); this one is plain"
            )
        self._check_input(x, dataset)
        ids, prev = [], None
        for t in range(x.shape[1]):
            key = torch.full((x.shape[0],), prev is None, dtype=torch.bool, device=x.device)
            ids_t = self._code_frames(
                x[:, t], torch.zeros_like(x[:, t]) if prev is None else prev, key, dataset
            )
            prev = self.decode_step(ids_t, prev, dataset)
            ids.append(ids_t)
        return torch.stack(ids, dim=1)

    @torch.no_grad()
    def decode(
        self,
        ids: torch.Tensor,
        dataset: str,
        n_frames: int | None = None,
        prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """token ids [B, T', *space'] → fields [B, T, C, *space] (z-scored).

        Conditional (closed loop): ``prev`` None → frame 0 decoded as a key frame; else ``prev [B,
        C, *space]`` is the last known frame and every frame is conditional. Each output frame is
        the next one's prev.
        """
        codes = self.fsq.indices_to_codes(ids.to(self.to_code.weight.device))
        return self.decode_codes(codes.to(self.to_code.weight.dtype), dataset, n_frames, prev)

    @torch.no_grad()
    def decode_step(
        self, ids_t: torch.Tensor, prev: torch.Tensor | None, dataset: str
    ) -> torch.Tensor:
        """Conditional tokenizers: one frame. ids_t [B, *grid], prev [B, C, *space] (None = key
        frame) → [B, C, *space]."""
        return self.decode_code_step(
            self.fsq.indices_to_codes(ids_t.to(self.to_code.weight.device)), prev, dataset
        )

    @torch.no_grad()
    def decode_code_step(
        self, codes: torch.Tensor, prev: torch.Tensor | None, dataset: str
    ) -> torch.Tensor:
        """Conditional tokenizers: one frame from its codes [B, *grid, d] (on the FSQ grid or
        continuous, in code units), prev [B, C, *space] (None = key frame) → [B, C, *space]."""
        if not self.cfg.conditional:
            raise ValueError(
                "decode_step is for conditional tokenizers (model.conditional); use decode()"
            )
        device, dtype = self.to_code.weight.device, self.to_code.weight.dtype
        codes = codes.to(device, dtype)
        B, space = (
            codes.shape[0],
            tuple(s * self.cfg.spatial_compression for s in codes.shape[1:-1]),
        )
        key = torch.full((B,), prev is None, dtype=torch.bool, device=device)
        if prev is None:
            prev = torch.zeros(
                B, self.datasets[dataset].n_channels, *space, dtype=dtype, device=device
            )
        elif prev.shape != (B, self.datasets[dataset].n_channels, *space):
            raise ValueError(
                f"dataset {dataset!r}: prev must be [B, C, *space] = {(B, self.datasets[dataset].n_channels, *space)}, "
                f"got {tuple(prev.shape)}"
            )
        return self.decode_frames(codes, prev.to(device, dtype), key, dataset)

    @torch.no_grad()
    def encode_step(
        self, x_t: torch.Tensor, prev: torch.Tensor | None, dataset: str
    ) -> torch.Tensor:
        """Conditional tokenizers: one frame's ids. x_t, prev [B, C, *space] z-scored (prev None =
        key frame) → [B, *grid]; the same ids as frame t of :meth:`encode` on a window holding prev,
        x_t (open loop)."""
        if not self.cfg.conditional:
            raise ValueError(
                "encode_step is for conditional tokenizers (model.conditional); use encode()"
            )
        self._check_input(x_t[:, None], dataset)
        key = torch.full((x_t.shape[0],), prev is None, dtype=torch.bool, device=x_t.device)
        return self._code_frames(x_t, torch.zeros_like(x_t) if prev is None else prev, key, dataset)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional tokenizers: x [B, T, C, *space] (z-scored) → (each frame decoded from its own
        tokens given the true frame before it, those ids): the best a one-step forecast of the
        tokens :meth:`encode` gives (skips included) can do. Without skips, ``forward``'s output."""
        ids = self.encode(x, dataset)
        prev, key = self._previous(x)
        codes = self.fsq.indices_to_codes(ids).to(x.dtype)
        out = self.decode_frames(codes.flatten(0, 1), prev.flatten(0, 1), key.flatten(), dataset)
        return out.unflatten(0, x.shape[:2]), ids

    @property
    def no_change_id(self) -> int:
        """Id of the FSQ code whose values are all 0: for a conditional tokenizer, "no change" at
        that token."""
        return int((self.fsq.levels // 2 * self.fsq.basis).sum())

    def forward(self, x: torch.Tensor, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C, *space] → (reconstruction [B, T, C, *space], token ids [B, T', *space']).

        Conditional: teacher forced, frame t > 0 decoded given the true x_{t-1}.
        """
        codes, ids = self.encode_latent(x, dataset)
        if self.cfg.conditional:
            B, T = x.shape[:2]
            prev, key = self._previous(x)
            recon = self.decode_frames(
                codes.flatten(0, 1), prev.flatten(0, 1), key.flatten(), dataset
            )
            return recon.unflatten(0, (B, T)), ids
        return self.decode_codes(codes, dataset, n_frames=x.shape[1]), ids

    # ------------------------------------------------------------------ conditional coding
    @staticmethod
    def _previous(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C, *space] → (prev [B, T, C, *space] with zeros for frame 0, key-frame mask [B,
        T])."""
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        key = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        key[:, 0] = True
        return prev, key

    @staticmethod
    def _flag(key: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Key-frame mask [N] → indicator channel [N, 1, *space] shaped like ``like`` [N, C,
        *space]."""
        return key.to(like.dtype).view(-1, *([1] * (like.ndim - 1))).expand(-1, 1, *like.shape[2:])

    def _encode_conditional(
        self, x: torch.Tensor, dataset: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frame from (x_t, x_{t-1}, key flag), frames independent of each other given that
        pair."""
        B, T = x.shape[:2]
        prev, key = self._previous(x)
        codes, ids = self._encode_frames(
            x.flatten(0, 1), prev.flatten(0, 1), key.flatten(), dataset
        )
        return codes.unflatten(0, (B, T)), ids.unflatten(0, (B, T))

    def _encode_frames(
        self, cur: torch.Tensor, prev: torch.Tensor, key: torch.Tensor, dataset: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Independent frames cur, prev [N, C, *space] (prev = 0 where key [N]) → (codes [N, *grid,
        d], ids [N, *grid])."""
        h = self.stems[_dataset_key(dataset)](torch.cat([cur, prev, self._flag(key, cur)], dim=1))
        for i in range(self.cfg.n_levels):
            for block in self.enc_blocks[i]:
                h = block(h, 1)
            h = self.enc_down[i](h)
        for block in self.enc_mid:
            h = block(h, 1)
        z = self.to_code(F.silu(self.enc_norm(h)))
        return self.fsq(z.movedim(1, -1))

    @torch.no_grad()
    def _code_frames(
        self, cur: torch.Tensor, prev: torch.Tensor, key: torch.Tensor, dataset: str
    ) -> torch.Tensor:
        """The ids :meth:`encode` gives frames cur, prev [N, C, *space] (key [N]): the encoder's,
        then, with ``skip_coding``, the skip decisions of :meth:`_skip_worse_codes`."""
        codes, ids = self._encode_frames(cur, prev, key, dataset)
        if not self.cfg.skip_coding:
            return ids
        return self._skip_worse_codes(cur, prev, key, codes, ids, dataset)

    def _skip_worse_codes(
        self,
        cur: torch.Tensor,
        prev: torch.Tensor,
        key: torch.Tensor,
        codes: torch.Tensor,
        ids: torch.Tensor,
        dataset: str,
    ) -> torch.Tensor:
        """Skip mode: ids [N, *grid] with "no change" wherever that codes the truth better.

        A token's patch is scored by its squared error per field variance (VRMSE's terms, the frame's
        own spatial variance per field), decoded with the encoder's codes and with none (= prev).
        Tokens whose patch prev matches at least as well become no-change; the decoder's receptive
        field spans neighbouring tokens, so the mixed frame is decoded again, and each frame keeps
        whichever of encoder codes / mixed / all no-change has the lowest VRMSE. Hence a frame's
        one-step ceiling is never above persistence's nor above the plain encoder's. Key frames keep
        the encoder's codes.
        """
        n, eps = self.cfg.n_spatial_dims, 1e-7
        space = tuple(range(2, 2 + n))
        var = cur.var(dim=space, keepdim=True) + eps  # [N, C, 1...]
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        sc = self.cfg.spatial_compression

        def token_error(rec: torch.Tensor) -> torch.Tensor:  # [N, *grid]
            return pool(((rec - cur) ** 2 / var).mean(1, keepdim=True), sc)[:, 0]

        def frame_vrmse(rec: torch.Tensor) -> torch.Tensor:  # [N], mean over fields
            return vrmse(rec, cur, n, eps=eps).mean(-1)

        full = self.decode_frames(codes, prev, key, dataset)
        grid_mask = (~key).view(-1, *([1] * n))
        skip = (token_error(prev) <= token_error(full)) & grid_mask
        mixed_codes = codes.masked_fill(skip[..., None], 0.0)
        mixed = self.decode_frames(mixed_codes, prev, key, dataset)
        choice = torch.stack([frame_vrmse(full), frame_vrmse(mixed), frame_vrmse(prev)]).argmin(0)
        choice = choice.masked_fill(key, 0).view(-1, *([1] * n))
        no_change = torch.full_like(ids, self.no_change_id)
        mixed_ids = torch.where(skip, no_change, ids)
        return torch.where(choice == 0, ids, torch.where(choice == 1, mixed_ids, no_change))

    def _decode_net(
        self, codes: torch.Tensor, prev: torch.Tensor, key: torch.Tensor, dataset: str
    ) -> torch.Tensor:
        """The decoder network f(codes, prev, key flag): codes [N, *grid, d], prev [N, C, *space] →
        [N, C, *space]."""
        k = self._key(dataset)
        # [N, w0, *space / patch]
        c = self.cond_stems[k](torch.cat([prev, self._flag(key, prev)], dim=1))
        skip = c
        for down in self.cond_down:
            c = down(F.silu(c))
        # the previous frame joins the codes at the token grid
        h = self.from_code(codes.movedim(-1, 1)) + c
        for block in self.dec_mid:
            h = block(h, 1)
        for step, _ in enumerate(reversed(range(self.cfg.n_levels))):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = self.dec_up[step](h)
            if step == self.cfg.n_levels - 1:
                h = h + skip  # and again at the stem resolution, where the fine detail is
            for block in self.dec_blocks[step]:
                h = block(h, 1)
        return self.heads[k](h)

    def decode_frames(
        self, codes: torch.Tensor, prev: torch.Tensor, key: torch.Tensor, dataset: str
    ) -> torch.Tensor:
        """Conditional decode of independent frames: codes [N, *grid, d], prev [N, C, *space], key
        [N] bool → [N, C, *space].

        Key frames: f(codes, 0, 1). Others: prev + f(codes, prev, 0) - f(zero_codes, prev, 0),
        computed in one batched pass; frames whose codes are all zero return ``prev`` itself (exact
        "no change").
        """
        key = key.to(codes.device)
        cond = ~key
        prev = torch.where(
            self._flag(key, prev).bool().expand_as(prev), torch.zeros_like(prev), prev
        )
        n_cond = int(cond.sum())
        out = self._decode_net(
            torch.cat([codes, torch.zeros_like(codes[cond])]),
            torch.cat([prev, prev[cond]]),
            torch.cat([key, key[cond]]),
            dataset,
        )
        out, base = out[: len(codes)], out[len(codes) :]
        if n_cond == 0:
            return out
        residual = out[cond] - base
        unchanged = (codes[cond] == 0).flatten(1).all(dim=1).view(-1, *([1] * (prev.ndim - 1)))
        result = out.clone()
        result[cond] = torch.where(unchanged, prev[cond], prev[cond] + residual)
        return result

    # ------------------------------------------------------------------ physical units
    def _stats(self, dataset: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._key(dataset)
        spec = self.datasets[dataset]
        if spec.mean is None or spec.std is None:
            raise DataError(f"dataset {dataset!r}: the tokenizer has no normalisation stats for it")
        shape = (-1,) + (1,) * self.cfg.n_spatial_dims  # broadcast over [..., C, *space]
        mean = torch.tensor(spec.mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(spec.std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std.clamp_min(1e-12)

    def normalize(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
        """Physical units → z-scores with the stats this tokenizer was trained with. x [..., C,
        *space]."""
        mean, std = self._stats(dataset, x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
        mean, std = self._stats(dataset, x)
        return x * std + mean

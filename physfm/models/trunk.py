"""The transformer trunk the AR and diffusion models share: rotary embeddings factorised over (time,
x, y, z), grouped-query attention with a preallocated KV cache, SwiGLU, pre-norm blocks, and
:class:`Trunk`, the base class that owns the blocks and everything about them (init, size, cost,
optimizer, activation checkpointing, KV cache). The models add only their embeddings, heads, loss
and generation."""

from __future__ import annotations

import dataclasses
import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# The config lives in physfm/core so that run.json's reader can carry it typed; models import it
# here.
from physfm.core.model_config import ModelConfig


def rope_pair_axes(cfg: ModelConfig) -> Tensor:
    """Which axis (0 = time, 1.. = space) each rotary pair of a head rotates with: [head_dim //
    2]."""
    n_pairs, n_axes = cfg.head_dim // 2, 1 + cfg.n_spatial_dims
    per_axis = [n_pairs // n_axes] * n_axes
    per_axis[0] += n_pairs - sum(per_axis)  # time gets the remainder
    return torch.cat([torch.full((n,), axis) for axis, n in enumerate(per_axis)])


def with_spatial_axes(cfg: ModelConfig, n_axes: int) -> ModelConfig:
    """``cfg``, able to read token grids of ``n_axes`` spatial axes (e.g. a 2D-pretrained model
    fine-tuned on 3D data).

    What carries over. Rotary embeddings have no weights, so every weight loads either way; what
    can change is which rotary pair turns with which axis. The shipped model configs give every
    model three spatial axes (``model.n_spatial_dims: 3``) whatever its data, and a 2D grid leaves
    z at position 0: its pairs never turned in pretraining (content-only channels). On a 3D grid
    the time, x and y pairs turn exactly as they did, and the z pairs start turning with depth;
    ``cfg`` is returned unchanged. A model built with fewer axes than the grid has no pair for the
    new one, so its ``n_spatial_dims`` is raised: :func:`rope_pair_axes` then deals the pairs among
    one more axis, and most pairs change axis or frequency. The weights still load, but positions
    read differently and fine-tuning has to relearn them.
    """
    if n_axes <= cfg.n_spatial_dims:
        return cfg
    return dataclasses.replace(cfg, n_spatial_dims=n_axes)


def rope_inv_freq(cfg: ModelConfig) -> Tensor:
    """Per-pair inverse frequencies; each axis gets the full theta^(-m/n) ladder over its own
    pairs."""
    axes = rope_pair_axes(cfg)
    freqs = []
    for axis in range(1 + cfg.n_spatial_dims):
        n = int((axes == axis).sum())
        freqs.append(cfg.rope_theta ** (-torch.arange(n, dtype=torch.float64) / n))
    return torch.cat(freqs).float()


class RotaryTables:
    """(cos, sin) [L, head_dim // 2] of the rotary angles for token positions [L, axes].

    The frequency table is cached per device and kept out of the module's buffers, so that
    ``model.to(bfloat16)`` cannot round the frequencies (angles of tens of radians need fp32)."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        if positions.device not in self.tables:
            self.tables[positions.device] = (
                rope_inv_freq(self.cfg).to(positions.device),
                rope_pair_axes(self.cfg).to(positions.device),
            )
        inv_freq, axes = self.tables[positions.device]
        angles = positions[:, axes].float() * inv_freq  # [L, head_dim // 2]
        return angles.cos(), angles.sin()


def token_positions(
    n_cond: int, n_frames: int, grid_shape: tuple[int, ...], n_axes: int, device=None
) -> Tensor:
    """Positions (t, x, y, z)[:n_axes] of the sequence [cond tokens, frames]: [n_cond + F*T, n_axes]
    long.

    Conditioning tokens sit at time -1, space 0 (before every frame); frame tokens at (f, *grid
    index)."""
    grids = torch.meshgrid(
        torch.arange(n_frames, device=device),
        *[torch.arange(n, device=device) for n in grid_shape],
        indexing="ij",
    )
    pos = torch.zeros(
        n_cond + n_frames * math.prod(grid_shape), n_axes, dtype=torch.long, device=device
    )
    pos[:n_cond, 0] = -1
    for axis, g in enumerate(grids):
        pos[n_cond:, axis] = g.reshape(-1)
    return pos


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs of x [B, H, L, head_dim] by angles with cos/sin [L, head_dim //
    2]."""
    x_pairs = x.float().unflatten(-1, (-1, 2))
    x1, x2 = x_pairs[..., 0], x_pairs[..., 1]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.dropout = cfg.dropout
        # One fused projection for q, k, v: one matmul instead of three (k, v are narrower under
        # GQA).
        self.wqkv = nn.Linear(
            cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=False
        )
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv: tuple[Tensor, Tensor] | None = None,
        cache_pos: int = 0,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``attn_mask`` [L, cache_pos + L] bool (True = attend) replaces token-causal masking; the
        diffusion variant uses it for frame-causal attention (physfm/models/diffusion.py)."""
        B, L, _ = x.shape
        q, k, v = self.wqkv(x).split(
            [
                self.n_head * self.head_dim,
                self.n_kv_head * self.head_dim,
                self.n_kv_head * self.head_dim,
            ],
            dim=-1,
        )
        # Normalise q and k per head before the transpose: RMSNorm reads a contiguous [B, L, H, hd]
        # (on the transposed view it ran ~20% slower on CPU); the values are the same either way.
        q = self.q_norm(q.view(B, L, self.n_head, self.head_dim)).transpose(1, 2)  # [B, H, L, hd]
        # [B, Hkv, L, hd]
        k = self.k_norm(k.view(B, L, self.n_kv_head, self.head_dim)).transpose(1, 2)
        v = v.view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            # Preallocated cache [B, Hkv, max_len, hd]: write in place, attend over the filled
            # prefix.
            k_cache, v_cache = kv
            if cache_pos > 0 and L > 1 and attn_mask is None:
                raise ValueError("KV cache: a multi-token chunk must start at position 0 (prefill)")
            k_cache[:, :, cache_pos : cache_pos + L] = k
            v_cache[:, :, cache_pos : cache_pos + L] = v
            k, v = k_cache[:, :, : cache_pos + L], v_cache[:, :, : cache_pos + L]
        # Causal over a full sequence; a single decode query may see the whole cached prefix.
        # SDPA dispatches to flash attention on GPU (bf16) and to a fused kernel on CPU.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None and L > 1,
            enable_gqa=self.n_kv_head != self.n_head,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.wo(y.transpose(1, 2).reshape(B, L, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm residual block; its output is the residual stream after this layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv: tuple[Tensor, Tensor] | None = None,
        cache_pos: int = 0,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), cos, sin, kv, cache_pos, attn_mask))
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


class KVCache:
    """Keys and values of every layer, allocated once per generate call and filled in place.

    A cache that concatenates every step copies the whole prefix per token (O(L^2) memory traffic):
    a 4-frame rollout of 128 windows took 4 minutes that way here."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (cfg.n_layer, batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        return self.k[i], self.v[i]


class Trunk(nn.Module):
    """Base of the AR and diffusion models: ``blocks``, the final ``norm``, the rotary tables and
    the hook support (``current_positions``). Parameter names are the models' own (``blocks.{i}…``,
    ``norm``), so checkpoints and the hook points of ``physfm/interp/hooks.py`` do not see the base
    class.

    A subclass calls ``super().__init__(cfg)``, registers its input embeddings, calls
    :meth:`_build_trunk`, registers its head and calls :meth:`init_weights`: registration order is
    init order, so a model built with the same torch seed gets the same weights (and checkpoints
    list keys in the same order)."""

    # Input lookup tables, by attribute name: no matmul FLOPs, so ``num_params(non_embedding=True)``
    # drops them.
    embedding_tables: tuple[str, ...] = ()

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg

    def _build_trunk(self) -> None:
        cfg = self.config
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self._rope = RotaryTables(cfg)
        # Positions (t, x, y, z) of the tokens in the latest forward chunk, for position-aware
        # hooks: [L_chunk, 1 + n_spatial_dims], time -1 marks conditioning tokens (see
        # physfm/interp/hooks.py).
        self.current_positions: Tensor | None = None

    def init_weights(self) -> None:
        """GPT-2/Llama init: N(0, init_std) everywhere, biases at zero, and the two projections that
        write into the residual stream (attn.wo, mlp.w_down) scaled by 1/sqrt(2 n_layer) so the
        stream's variance does not grow with depth (each block adds two such terms). Call again
        after ``to_empty`` from the meta device."""
        std, n_layer = self.config.init_std, self.config.n_layer
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.ones_(p)  # RMSNorm gains
            elif name.endswith(("attn.wo.weight", "mlp.w_down.weight")):
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * n_layer))
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    # -- sizes and cost ---------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; ``non_embedding`` drops the input lookup tables (they cost no matmul
        FLOPs)."""

        # ZeRO-3 leaves each rank a shard and records the full size as ds_numel; count that when
        # present.
        def numel(p: Tensor) -> int:
            return getattr(p, "ds_numel", p.numel())

        n = sum(numel(p) for p in self.parameters())
        if non_embedding:
            tables = [getattr(self, name) for name in self.embedding_tables]
            n -= sum(numel(p) for t in tables if t is not None for p in t.parameters())
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N for the matmuls plus the attention term
        12 * n_layer * n_head * head_dim * seq_len (nanoGPT / PaLM appendix B; causal masking not
        discounted)."""
        cfg, seq_len = self.config, seq_len or self.config.max_seq_len
        return (
            6 * self.num_params(non_embedding=True)
            + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len
        )

    def estimate_mfu(
        self, tokens_per_s: float, peak_flops: float, seq_len: int | None = None
    ) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak FLOP/s."""
        return self.flops_per_token(seq_len) * tokens_per_s / peak_flops

    def configure_optimizer(
        self,
        weight_decay: float,
        lr: float,
        betas: tuple[float, float],
        device_type: str | None = None,
    ) -> torch.optim.AdamW:
        """AdamW decaying only 2-D weights (matmuls, embeddings); gains and biases are not decayed
        (decay toward 0 would fight the normalisation's scale)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        device_type = device_type or next(self.parameters()).device.type
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(
            groups, lr=lr, betas=tuple(betas), **({"fused": True} if fused else {})
        )

    # -- running the blocks
    # -------------------------------------------------------------------------
    def new_kv_cache(self, batch: int, max_len: int, device: torch.device | str) -> KVCache:
        """An empty cache for ``batch`` sequences of up to ``max_len`` tokens. Under autocast (bf16
        on GPU) k/v come out in the autocast dtype, not the weights' dtype, so the cache takes that
        one."""
        device_type = torch.device(device).type
        dtype = (
            torch.get_autocast_dtype(device_type)
            if torch.is_autocast_enabled(device_type)
            else next(self.parameters()).dtype
        )
        return KVCache(self.config, batch, max_len, device, dtype)

    def _blocks(
        self,
        x: Tensor,
        positions: Tensor,
        cache: KVCache | None = None,
        cache_pos: int = 0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Every block, then the final norm, on the chunk x [B, L, d] at ``positions`` [L, axes].
        ``mask`` [L, cache_pos + L] bool (True = attend) replaces token-causal attention."""
        self.current_positions = positions
        cos, sin = self._rope(positions)
        recompute = (
            self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        )
        for i, block in enumerate(self.blocks):
            kv = cache.layer(i) if cache is not None else None
            if recompute:  # keep only each block's input; recompute its inside during backward
                x = checkpoint(block, x, cos, sin, kv, cache_pos, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, kv, cache_pos, mask)
        return self.norm(x)


def frame_causal_mask(frame_index: Tensor) -> Tensor:
    """frame_index [L] (-1 for conditioning tokens) → bool [L, L]: query q may attend key k iff k's
    frame is not later than q's (bidirectional inside a frame, causal across frames)."""
    return frame_index[None, :] <= frame_index[:, None]

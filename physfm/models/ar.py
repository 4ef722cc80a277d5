"""The autoregressive physics transformer: a Llama-style decoder over discrete tokenizer codes.

A training sample is a window of F frames, each a token grid ``[*grid]`` (1D, 2D or 3D) from the
tokenizer, flattened frame-major into one sequence. Conditioning tokens (the dataset and, optionally,
bucketed simulation parameters) are prepended, so the model reads::

    [dataset] [param_0 .. param_{P-1}] frame_0 (T tokens) frame_1 ... frame_{F-1}      T = prod(grid)

Rotary embeddings are factorised over (time, x, y, z): each head's dimensions are split into one
chunk per axis and every token rotates by its own (t, i, j, k) position, so one model reads 1D, 2D and
3D grids (missing axes sit at position 0 and rotate by nothing). Parallelism, precision and launch are
applied from outside (the training layer); this file only knows torch.

Hook points for probing/steering are the stable module names ``tok_embedding``, ``blocks.{i}``
(residual stream after block i), ``blocks.{i}.attn`` and ``blocks.{i}.mlp`` (see ``physfm/interp/hooks.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.models.trunk import KVCache, ModelConfig, Trunk, token_positions

IGNORE_INDEX = -100  # targets with this value carry no loss (context frames, padding)


class PhysicsTransformer(Trunk):
    embedding_tables = ("tok_embedding", "dataset_embedding", "param_embedding")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.tok_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.dataset_embedding = nn.Embedding(cfg.n_datasets, cfg.d_model)
        # All parameter slots share one table: slot s, bucket b -> row s * n_param_buckets + b.
        self.param_embedding = (
            nn.Embedding(cfg.n_cond_params * cfg.n_param_buckets, cfg.d_model) if cfg.n_cond_tokens > 1 else None
        )
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self._build_trunk()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)  # untied, as in Llama/Cosmos
        self.init_weights()

    @property
    def n_cond_tokens(self) -> int:
        return self.config.n_cond_tokens

    # -- forward ------------------------------------------------------------------------------------
    def _cond_embeddings(self, dataset_ids: Tensor, param_ids: Tensor | None) -> Tensor:
        """Conditioning tokens [B, n_cond, d]: the dataset, then one token per simulation parameter."""
        cond = self.dataset_embedding(dataset_ids)[:, None]
        if self.param_embedding is not None:
            cfg = self.config
            if param_ids is None or param_ids.shape != (dataset_ids.shape[0], cfg.n_cond_params):
                raise ValueError(
                    f"param_ids: expected [B, {cfg.n_cond_params}] bucket ids, got "
                    f"{None if param_ids is None else tuple(param_ids.shape)}"
                )
            slot = torch.arange(cfg.n_cond_params, device=param_ids.device) * cfg.n_param_buckets
            cond = torch.cat([cond, self.param_embedding(slot + param_ids.clamp(0, cfg.n_param_buckets - 1))], 1)
        return cond

    def _embed(self, idx: Tensor, dataset_ids: Tensor, param_ids: Tensor | None) -> Tensor:
        """[cond tokens, idx] embedded: [B, n_cond + L, d]."""
        if dataset_ids.shape != (idx.shape[0],):
            raise ValueError(f"dataset_ids: expected shape [{idx.shape[0]}], got {tuple(dataset_ids.shape)}")
        x = torch.cat([self._cond_embeddings(dataset_ids, param_ids), self.tok_embedding(idx)], dim=1)
        return self.embed_dropout(x)

    def _positions(self, n_frames: int, grid_shape: tuple[int, ...], device) -> Tensor:
        """Positions of [cond, n_frames frames]; also published as ``current_positions`` for hooks."""
        if len(grid_shape) > self.config.n_spatial_dims:
            raise ValueError(f"grid_shape {grid_shape}: the model has {self.config.n_spatial_dims} spatial axes")
        positions = token_positions(self.n_cond_tokens, n_frames, grid_shape, 1 + self.config.n_spatial_dims, device)
        self.current_positions = positions
        return positions

    def forward(
        self,
        idx: Tensor,
        grid_shape: tuple[int, ...],
        dataset_ids: Tensor,
        targets: Tensor | None = None,
        param_ids: Tensor | None = None,
        return_logits: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """idx [B, L = F*T] frame-major token ids -> logits [B, L, V] where ``logits[:, k]`` predicts
        ``idx[:, k]`` from the conditioning tokens and ``idx[:, :k]``.

        ``targets`` [B, L] are aligned with idx: usually idx itself with the context frames set to
        IGNORE_INDEX, so the loss covers the target frames only. With ``return_logits=False`` the head
        runs on the target positions only (saves the [B, L, V] logits' memory in training)."""
        grid_shape = tuple(grid_shape)
        if idx.shape[1] % math.prod(grid_shape):
            raise ValueError(f"idx: length {idx.shape[1]} is not a whole number of {grid_shape} frames")
        positions = self._positions(idx.shape[1] // math.prod(grid_shape), grid_shape, idx.device)
        x = self._embed(idx, dataset_ids, param_ids)
        h = self._blocks(x, positions)[:, self.n_cond_tokens - 1 : -1]  # outputs that predict idx[:, k]
        if targets is None:
            return self.lm_head(h), None
        if not return_logits:
            keep = targets != IGNORE_INDEX
            return None, F.cross_entropy(self.lm_head(h[keep]).float(), targets[keep])
        logits = self.lm_head(h)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss

    # -- generation ---------------------------------------------------------------------------------
    @staticmethod
    def _sample(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
        """logits [B, V] -> token ids [B]: greedy at temperature 0, else softmax sampling (top-k optional)."""
        if temperature <= 0:
            return logits.argmax(dim=-1)
        logits = logits.float() / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]

    @torch.no_grad()
    def generate_frames(
        self,
        context_ids: Tensor,
        n_frames: int,
        dataset_ids: Tensor,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        param_ids: Tensor | None = None,
        use_cache: bool = True,
        window_frames: int | None = None,
    ) -> Tensor:
        """Autoregressive rollout: context_ids [B, F_ctx, *grid] -> new frames [B, n_frames, *grid].

        The model attends over at most ``window_frames`` frames (default ``config.max_frames``); when the
        rollout outgrows the window it slides by one frame, re-encoding the newest window_frames - 1 frames
        with time restarting at 0 as in training. ``use_cache=False`` re-runs the whole prefix per token."""
        B, grid = context_ids.shape[0], tuple(context_ids.shape[2:])
        T, window = math.prod(grid), window_frames or self.config.max_frames
        frames = context_ids.reshape(B, -1, T)  # [B, F, T]
        cache = self.new_kv_cache(B, self.n_cond_tokens + window * T, context_ids.device) if use_cache else None
        remaining = n_frames
        while remaining > 0:
            n_ctx = min(frames.shape[1], window - 1)
            n_now = min(remaining, window - n_ctx)
            new = self._decode_window(
                frames[:, frames.shape[1] - n_ctx :],
                n_now * T,
                grid,
                dataset_ids,
                param_ids,
                cache,
                temperature,
                top_k,
                generator,
            )
            frames = torch.cat([frames, new.view(B, n_now, T)], dim=1)
            remaining -= n_now
        return frames[:, -n_frames:].reshape(B, n_frames, *grid)

    def _decode_window(
        self,
        ctx: Tensor,
        n_tokens: int,
        grid: tuple[int, ...],
        dataset_ids: Tensor,
        param_ids: Tensor | None,
        cache: KVCache | None,
        temperature: float,
        top_k: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """ctx [B, F_ctx, T] -> n_tokens new ids [B, n_tokens], one window without sliding."""
        B, n_ctx, T = ctx.shape
        out = torch.empty(B, n_tokens, dtype=torch.long, device=ctx.device)
        if cache is None:  # reference path: the full forward over the growing sequence, per token
            seq = ctx.reshape(B, -1)
            for s in range(n_tokens):
                positions = self._positions(n_ctx + s // T + 1, grid, ctx.device)[: self.n_cond_tokens + n_ctx * T + s]
                self.current_positions = positions
                x = self._embed(torch.cat([seq, out[:, :s]], 1), dataset_ids, param_ids)
                out[:, s] = self._sample(self.lm_head(self._blocks(x, positions)[:, -1]), temperature, top_k, generator)
            return out
        n_frames_total = n_ctx + -(-n_tokens // T)
        positions = self._positions(n_frames_total, grid, ctx.device)
        pos = self.n_cond_tokens + n_ctx * T
        self.current_positions = positions[:pos]
        x = self._embed(ctx.reshape(B, -1), dataset_ids, param_ids)
        logits = self.lm_head(self._blocks(x, positions[:pos], cache, 0)[:, -1])
        for s in range(n_tokens):
            out[:, s] = self._sample(logits, temperature, top_k, generator)
            if s + 1 < n_tokens:  # feed the new token; its output predicts the next one
                self.current_positions = positions[pos : pos + 1]
                h = self._blocks(self.tok_embedding(out[:, s : s + 1]), positions[pos : pos + 1], cache, pos)
                logits = self.lm_head(h[:, -1])
                pos += 1
        return out

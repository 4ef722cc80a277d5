"""The autoregressive physics transformer: a Llama-style decoder over discrete tokenizer codes.

A training sample is a window of F frames, each a token grid ``[*grid]`` (1D, 2D or 3D) from the
tokenizer, flattened frame-major into one sequence. Conditioning tokens (the dataset and,
optionally, bucketed simulation parameters) are prepended, so the model reads::

    [dataset] [param_0 .. param_{P-1}] frame_0 (T tokens) frame_1 ... frame_{F-1}      T = prod(grid)

Two ways to generate (``model.prediction``): "raster" predicts each token from the one before it in
that sequence (token-causal attention, T decode steps per frame); "next_frame" predicts every token
of frame t+1 at once from frames <= t (block-causal attention: full inside a frame, causal across
frames; one forward pass per frame). In next-frame mode the output at (t, p) predicts the token at
(t+1, p), the LM head starts as a copy of the embedding table and a learned ``copy_gain`` adds to
the logit of the input token, so the untrained model already predicts "the same token again"
(copy-tokens, i.e. persistence in token space) and training only has to learn the change.

Rotary embeddings are factorised over (time, x, y, z): each head's dimensions are split into one
chunk per axis and every token rotates by its own (t, i, j, k) position, so one model reads 1D, 2D
and 3D grids (missing axes sit at position 0 and rotate by nothing). Parallelism, precision and
launch are applied from outside (the training layer); this file only knows torch.

Hook points for probing/steering are the stable module names ``tok_embedding``, ``blocks.{i}``
(residual stream after block i), ``blocks.{i}.attn`` and ``blocks.{i}.mlp`` (see
``physfm/interp/hooks.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.models.code_head import CodeEmbedding, DigitHead, vocab_expected_ids
from physfm.models.trunk import KVCache, ModelConfig, Trunk, frame_causal_mask, token_positions

IGNORE_INDEX = -100  # targets with this value carry no loss (context frames, padding)


@dataclass(frozen=True)
class _Generation:
    """What every decode step of one ``generate_frames`` call shares."""

    grid: tuple[int, ...]
    dataset_ids: Tensor
    param_ids: Tensor | None
    cache: KVCache | None
    sample: Callable[[Tensor], Tensor]  # logits [N, V] -> ids [N] (greedy, temperature, top-k)


class PhysicsTransformer(Trunk):
    embedding_tables = ("tok_embedding", "dataset_embedding", "param_embedding")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        cfg.require_levels()
        self.tok_embedding = (
            CodeEmbedding(cfg.fsq_levels, cfg.d_model, cfg.id_embedding)
            if cfg.head == "digits"
            else nn.Embedding(cfg.vocab_size, cfg.d_model)
        )
        self.dataset_embedding = nn.Embedding(cfg.n_datasets, cfg.d_model)
        # All parameter slots share one table: slot s, bucket b -> row s * n_param_buckets + b.
        self.param_embedding = (
            nn.Embedding(cfg.n_cond_params * cfg.n_param_buckets, cfg.d_model)
            if cfg.n_cond_tokens > 1
            else None
        )
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self._build_trunk()
        if cfg.head == "digits":  # one softmax per FSQ digit with its own copy bias (code_head.py)
            self.lm_head = DigitHead(cfg.fsq_levels, cfg.d_model, copy_bias=True)
            self.copy_gain = None
        else:
            # untied, as in Llama/Cosmos
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            # Next-frame mode: extra logit for the token at the same place in the input frame
            # (learned, from 1).
            self.copy_gain = nn.Parameter(torch.ones(1)) if cfg.prediction == "next_frame" else None
        self.init_weights()

    def init_weights(self) -> None:
        """The trunk's init (see :meth:`Trunk.init_weights`); in next-frame mode the head then
        starts as a copy of the embedding table. Why: the final RMSNorm scales each position's
        (mostly embedding) stream to unit RMS, so with head = embedding the input token's own logit
        leads by ~d_model * init_std and the untrained model predicts copy-tokens. A copy, not a
        tie: tied weights would be one tensor under two names (safetensors refuses that, and ZeRO-3
        gathers parameters per module)."""
        super().init_weights()
        if self.config.head == "digits":
            self.lm_head.reset_parameters()
        elif self.config.prediction == "next_frame":
            with torch.no_grad():
                self.lm_head.weight.copy_(self.tok_embedding.weight)

    @property
    def n_cond_tokens(self) -> int:
        return self.config.n_cond_tokens

    # -- forward
    # ------------------------------------------------------------------------------------
    def _cond_embeddings(self, dataset_ids: Tensor, param_ids: Tensor | None) -> Tensor:
        """Conditioning tokens [B, n_cond, d]: the dataset, then one token per simulation
        parameter."""
        cond = self.dataset_embedding(dataset_ids)[:, None]
        if self.param_embedding is not None:
            cfg = self.config
            if param_ids is None or param_ids.shape != (dataset_ids.shape[0], cfg.n_cond_params):
                raise ValueError(
                    f"param_ids: expected [B, {cfg.n_cond_params}] bucket ids, got "
                    f"{None if param_ids is None else tuple(param_ids.shape)}"
                )
            slot = torch.arange(cfg.n_cond_params, device=param_ids.device) * cfg.n_param_buckets
            cond = torch.cat(
                [cond, self.param_embedding(slot + param_ids.clamp(0, cfg.n_param_buckets - 1))], 1
            )
        return cond

    def _embed(self, idx: Tensor, dataset_ids: Tensor, param_ids: Tensor | None) -> Tensor:
        """[cond tokens, idx] embedded: [B, n_cond + L, d]."""
        if dataset_ids.shape != (idx.shape[0],):
            raise ValueError(
                f"dataset_ids: expected shape [{idx.shape[0]}], got {tuple(dataset_ids.shape)}"
            )
        x = torch.cat(
            [self._cond_embeddings(dataset_ids, param_ids), self.tok_embedding(idx)], dim=1
        )
        return self.embed_dropout(x)

    def _positions(self, n_frames: int, grid_shape: tuple[int, ...], device) -> Tensor:
        """Positions of [cond, n_frames frames]; also published as ``current_positions`` for
        hooks."""
        if len(grid_shape) > self.config.n_spatial_dims:
            raise ValueError(
                f"grid_shape {grid_shape}: the model has {self.config.n_spatial_dims} spatial axes"
            )
        positions = token_positions(
            self.n_cond_tokens, n_frames, grid_shape, 1 + self.config.n_spatial_dims, device
        )
        self.current_positions = positions
        return positions

    def _logits(self, h: Tensor, inputs: Tensor | None) -> Tensor:
        """LM head over h [..., d]; in next-frame mode plus ``copy_gain`` on each position's input
        token [...]."""
        if self.config.head == "digits":
            return self.lm_head(h, inputs)
        logits = self.lm_head(h)
        if self.copy_gain is not None:
            gain = self.copy_gain.to(logits.dtype).expand(inputs.shape).unsqueeze(-1)
            logits = logits.scatter_add(-1, inputs.unsqueeze(-1), gain)
        return logits

    def forward(
        self,
        idx: Tensor,
        grid_shape: tuple[int, ...],
        dataset_ids: Tensor,
        targets: Tensor | None = None,
        param_ids: Tensor | None = None,
        return_logits: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """idx [B, L = F*T] frame-major token ids -> logits where ``logits[:, k]`` predicts ``idx[:,
        k]``: raster mode [B, L, V] from the conditioning tokens and ``idx[:, :k]``; next-frame mode
        [B, L - T, V] (from the second frame on, as the first has no frame before it) from the
        frames before k's.

        ``targets`` [B, L] are aligned with idx: usually idx itself with the frames that carry no
        loss set to IGNORE_INDEX (next-frame mode ignores the first frame's by construction). With
        ``return_logits=False`` the head runs on the target positions only (saves [B, L, V] logits'
        memory)."""
        grid_shape = tuple(grid_shape)
        T = math.prod(grid_shape)
        if idx.shape[1] % T:
            raise ValueError(
                f"idx: length {idx.shape[1]} is not a whole number of {grid_shape} frames"
            )
        positions = self._positions(idx.shape[1] // T, grid_shape, idx.device)
        x = self._embed(idx, dataset_ids, param_ids)
        n_cond = self.n_cond_tokens
        if self.config.prediction == "next_frame":
            if idx.shape[1] < 2 * T:
                raise ValueError(
                    f"idx: next-frame prediction needs at least two {grid_shape} frames"
                )
            h = self._blocks(x, positions, mask=frame_causal_mask(positions[:, 0]))[
                :, n_cond : n_cond + idx.shape[1] - T
            ]
            inputs, targets = idx[:, :-T], None if targets is None else targets[:, T:]
        else:
            h = self._blocks(x, positions)[:, n_cond - 1 : -1]  # outputs that predict idx[:, k]
            inputs = None
        if targets is None:
            return self._logits(h, inputs), None
        if not return_logits:
            keep = targets != IGNORE_INDEX
            logits = self._logits(h[keep], None if inputs is None else inputs[keep])
            return None, self._loss(logits, targets[keep])
        logits = self._logits(h, inputs)
        keep = targets != IGNORE_INDEX
        return logits, self._loss(logits[keep], targets[keep])

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Training loss of logits [N, ...] for target ids [N]: cross-entropy (summed over the
        digits for head=digits, plus the expected code's squared error at ``code_loss_weight``)."""
        if self.config.head == "digits":
            return self.lm_head.loss(logits, targets, self.config.code_loss_weight)
        return F.cross_entropy(logits.float(), targets)

    def predict_ids(self, logits: Tensor) -> Tensor:
        """Greedy ids [...] from logits [..., V or sum(levels)] as a greedy rollout decodes them."""
        return self._sample(logits.flatten(0, -2), 0.0, None, None).view(logits.shape[:-1])

    # -- generation
    # ---------------------------------------------------------------------------------
    def _sample(
        self,
        logits: Tensor,
        temperature: float,
        top_k: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """logits [B, V] -> token ids [B]: greedy at temperature 0 (``model.greedy``: the mode, or
        the expected code rounded to the grid), else softmax sampling (top-k optional)."""
        cfg = self.config
        if cfg.head == "digits":
            return self.lm_head.sample(logits, temperature, top_k, generator, cfg.greedy)
        if temperature <= 0:
            if cfg.greedy == "mean":
                return vocab_expected_ids(logits, cfg.fsq_levels)
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

        The model attends over at most ``window_frames`` frames (default ``config.max_frames``);
        when the rollout outgrows the window it slides by one frame, re-encoding the newest
        window_frames - 1 frames with time restarting at 0 as in training. ``use_cache=False``
        re-runs the whole prefix per token (per frame in next-frame mode)."""
        B, grid = context_ids.shape[0], tuple(context_ids.shape[2:])
        T, window = math.prod(grid), window_frames or self.config.max_frames
        frames = context_ids.reshape(B, -1, T)  # [B, F, T]
        cache = (
            self.new_kv_cache(B, self.n_cond_tokens + window * T, context_ids.device)
            if use_cache
            else None
        )
        sample = partial(self._sample, temperature=temperature, top_k=top_k, generator=generator)
        g = _Generation(grid, dataset_ids, param_ids, cache, sample)
        remaining = n_frames
        while remaining > 0:
            n_ctx = min(frames.shape[1], window - 1)
            n_now = min(remaining, window - n_ctx)
            decode = (
                self._decode_frames
                if self.config.prediction == "next_frame"
                else self._decode_window
            )
            new = decode(frames[:, frames.shape[1] - n_ctx :], n_now * T, g)
            frames = torch.cat([frames, new.view(B, n_now, T)], dim=1)
            remaining -= n_now
        return frames[:, -n_frames:].reshape(B, n_frames, *grid)

    def _decode_window(self, ctx: Tensor, n_tokens: int, g: _Generation) -> Tensor:
        """ctx [B, F_ctx, T] -> n_tokens new ids [B, n_tokens], one window without sliding."""
        B, n_ctx, T = ctx.shape
        out = torch.empty(B, n_tokens, dtype=torch.long, device=ctx.device)
        if g.cache is None:  # reference path: the full forward over the growing sequence, per token
            seq = ctx.reshape(B, -1)
            for s in range(n_tokens):
                positions = self._positions(n_ctx + s // T + 1, g.grid, ctx.device)[
                    : self.n_cond_tokens + n_ctx * T + s
                ]
                self.current_positions = positions
                x = self._embed(torch.cat([seq, out[:, :s]], 1), g.dataset_ids, g.param_ids)
                out[:, s] = g.sample(self.lm_head(self._blocks(x, positions)[:, -1]))
            return out
        n_frames_total = n_ctx + -(-n_tokens // T)
        positions = self._positions(n_frames_total, g.grid, ctx.device)
        pos = self.n_cond_tokens + n_ctx * T
        self.current_positions = positions[:pos]
        x = self._embed(ctx.reshape(B, -1), g.dataset_ids, g.param_ids)
        logits = self.lm_head(self._blocks(x, positions[:pos], g.cache, 0)[:, -1])
        for s in range(n_tokens):
            out[:, s] = g.sample(logits)
            if s + 1 < n_tokens:  # feed the new token; its output predicts the next one
                self.current_positions = positions[pos : pos + 1]
                h = self._blocks(
                    self.tok_embedding(out[:, s : s + 1]), positions[pos : pos + 1], g.cache, pos
                )
                logits = self.lm_head(h[:, -1])
                pos += 1
        return out

    def _decode_frames(self, ctx: Tensor, n_tokens: int, g: _Generation) -> Tensor:
        """Next-frame mode: ctx [B, F_ctx, T] -> n_tokens (whole frames) new ids [B, n_tokens], one
        forward per frame."""
        B, n_ctx, T = ctx.shape
        n_new = n_tokens // T
        positions = self._positions(n_ctx + n_new, g.grid, ctx.device)
        frames = [ctx[:, f] for f in range(n_ctx)]
        pos = self.n_cond_tokens + n_ctx * T  # sequence length so far
        if g.cache is not None:  # prefill: conditioning + context frames, block-causal
            x = self._embed(ctx.reshape(B, -1), g.dataset_ids, g.param_ids)
            h = self._blocks(x, positions[:pos], g.cache, 0, frame_causal_mask(positions[:pos, 0]))[
                :, -T:
            ]
        for f in range(n_new):
            if g.cache is None:  # reference path: the whole window again for every frame
                x = self._embed(torch.cat(frames, 1), g.dataset_ids, g.param_ids)
                h = self._blocks(x, positions[:pos], mask=frame_causal_mask(positions[:pos, 0]))[
                    :, -T:
                ]
            logits = self._logits(h, frames[-1])  # [B, T, V]
            frames.append(g.sample(logits.flatten(0, 1)).view(B, T))
            # the new frame attends to everything before it and itself
            if g.cache is not None and f + 1 < n_new:
                chunk = positions[pos : pos + T]
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=ctx.device)
                h = self._blocks(self.tok_embedding(frames[-1]), chunk, g.cache, pos, mask)
            pos += T
        return torch.cat(frames[n_ctx:], dim=1)


class FrameStream:
    """Next-frame generation that keeps its KV cache between frames: the caller reads :meth:`logits`
    for the next frame, picks (and may decode, refine and re-encode) it, then :meth:`append`\\ s its
    token ids, which costs one forward over that frame's T tokens instead of a re-prefill of the
    whole window.

    The stream holds at most ``window_frames`` frames (the length the model was trained on):
    :attr:`room` says how many more frames can be appended *and still have a trained prediction
    after them* (the output at the window's last position predicts nothing in training), after which
    the caller re-keys, i.e. opens a new stream on its newest context. Equal, up to floating point,
    to re-running the whole window through :meth:`PhysicsTransformer.forward` every frame
    (``tests/test_rollout.py`` checks the tokens match)."""

    def __init__(
        self,
        model: PhysicsTransformer,
        context_ids: Tensor,
        dataset_ids: Tensor,
        window_frames: int,
        param_ids: Tensor | None = None,
    ):
        if model.config.prediction != "next_frame":
            raise ValueError(
                "FrameStream: needs model.prediction = next_frame (one forward pass per frame)"
            )
        B, n_ctx, grid = context_ids.shape[0], context_ids.shape[1], tuple(context_ids.shape[2:])
        if not 1 <= n_ctx < window_frames:
            raise ValueError(
                f"FrameStream: {n_ctx} context frames leave no room in a {window_frames}-frame window"
            )
        self.model, self.grid, self.window_frames = model, grid, window_frames
        self.dataset_ids, self.param_ids = dataset_ids, param_ids
        T = math.prod(grid)
        self.cache = model.new_kv_cache(
            B, model.n_cond_tokens + window_frames * T, context_ids.device
        )
        self.positions = model._positions(window_frames, grid, context_ids.device)
        self.n_frames = n_ctx
        self.pos = model.n_cond_tokens + n_ctx * T
        x = model._embed(context_ids.reshape(B, -1), dataset_ids, param_ids)
        prefix = self.positions[: self.pos]
        self._h = model._blocks(x, prefix, self.cache, 0, frame_causal_mask(prefix[:, 0]))[:, -T:]
        self._last = context_ids[:, -1].reshape(B, T)

    @property
    def room(self) -> int:
        """Frames that can still be appended: the last appended one's output must be a trained
        prediction."""
        return self.window_frames - 1 - self.n_frames

    @torch.no_grad()
    def logits(self) -> Tensor:
        """[B, T, V]: the distribution of every token of the next frame."""
        return self.model._logits(self._h, self._last)

    @torch.no_grad()
    def append(self, frame_ids: Tensor) -> None:
        """Add the frame ``frame_ids`` [B, *grid] at the end of the window (it attends to every
        cached frame and to itself, as block-causal attention does in training)."""
        if self.room < 1:
            raise ValueError(
                f"FrameStream: the {self.window_frames}-frame window is full; open a new stream"
            )
        B, T = frame_ids.shape[0], math.prod(self.grid)
        ids = frame_ids.reshape(B, T)
        x = self.model._embed(ids, self.dataset_ids, self.param_ids)[:, self.model.n_cond_tokens :]
        chunk = self.positions[self.pos : self.pos + T]
        mask = torch.ones(T, self.pos + T, dtype=torch.bool, device=ids.device)
        self._h = self.model._blocks(x, chunk, self.cache, self.pos, mask)
        self._last, self.pos, self.n_frames = ids, self.pos + T, self.n_frames + 1

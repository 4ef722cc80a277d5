"""The diffusion variant of the physics model: flow matching over the tokenizer's continuous
latents.

The AR model (``physfm/models/ar.py``) predicts token ids, so it inherits the tokenizer's
quantisation error in both what it reads and what it writes. This model reads and writes the
tokenizer encoder's latent *before* FSQ rounding (``physfm/models/latents.py``: the bounded latent
in code units, ~[-1, 1] per channel) and the tokenizer's decoder turns its samples back into fields.
A training sample is a window of F latent frames ``[F, *grid, D]`` (D = number of FSQ levels):
``F_ctx`` clean context frames, then ``F - F_ctx`` target frames that are noised. The sequence the
transformer reads is::

    [dataset] ctx_0 (T tokens) .. ctx_{F_ctx-1}  x_t frame(s)          T = prod(grid), one token per cell

Every token is a continuous vector: ``tok_embedding`` is a linear map D → d_model (the AR model's
lookup table, by name, so the hook points of ``physfm/interp/hooks.py`` are the same); the target
tokens also get the embedding of the flow time t; ``head`` maps d_model → D (the velocity). Blocks
and rotary embeddings over (time, x, y, z) are the shared trunk's (``physfm/models/trunk.py``), the
conditioning token is the AR model's. Attention is *frame-causal*: a token sees the conditioning
token and every token of its own and earlier frames. Context tokens never see the noisy frames, so
during sampling the context runs once (prefill into the trunk's KV cache) and each ODE step runs
only the target frame's T tokens against the cached context.

Why flow matching (rectified flow, Lipman et al. 2023; Liu et al. 2023; SD3, Esser et al. 2024)
rather than DDPM/v-prediction: the path x_t = (1 - t) x_0 + t x_1 from noise x_0 to data x_1 is a
straight line with a constant velocity target v = x_1 - x_0, so (a) there is no noise schedule to
choose or tune, (b) the regression target has the same scale at every t (what v-prediction buys
DDPM, here by construction), and (c) the sampler is a plain ODE (Euler, Heun) that stays accurate at
few steps — what a rollout of many frames needs. One Euler step from pure noise returns x_0 + v(x_0,
0) = E[x_1 | context]: the conditional mean, the MSE-optimal forecast; more steps move toward a
sample of the distribution (sharper, but with more per-pixel error). Times are drawn logit-normal
(SD3), which spends training on the middle of the path, where the velocity is hardest to predict.

Sampling is deterministic given a ``torch.Generator``: the only randomness is the initial noise.
This file only knows torch; training, data and rollout live in ``physfm/train/diffusion.py`` and
``physfm/inference/diffusion_model.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_pipelines.config import ConfigError
from physfm.core.errors import CheckpointError
from physfm.core.model_config import DiffusionConfig
from physfm.models.trunk import ModelConfig, Trunk, frame_causal_mask, token_positions
from tokenizer.fsq import FSQ


def timestep_features(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """t [B] in [0, 1] → [B, dim] sinusoidal features (DDPM/DiT); t is scaled by 1000 so that the
    fastest frequencies resolve the step sizes a 1..100-step sampler takes."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class LatentFlowTransformer(Trunk):
    """Velocity field v(x_t, t | context latents, dataset) over latent grid tokens. See the module
    docstring."""

    # tok_embedding is a linear map here: it costs matmul FLOPs
    embedding_tables = ("dataset_embedding",)

    def __init__(self, cfg: ModelConfig, diffusion: DiffusionConfig):
        super().__init__(cfg)
        diffusion.validate()
        if diffusion.latent_dim < 1:
            raise ConfigError(
                "diffusion.latent_dim: unresolved (0); set it from the tokenizer's FSQ levels"
            )
        if cfg.n_cond_tokens != 1:
            raise ConfigError(
                "model.n_cond_params/n_param_buckets: the diffusion model conditions on the dataset "
                "only; set model.n_param_buckets=0"
            )
        self.diffusion = diffusion
        D, d = diffusion.latent_dim, cfg.d_model
        # named like the AR lookup table: hook point "embedding"
        self.tok_embedding = nn.Linear(D, d)
        self.dataset_embedding = nn.Embedding(cfg.n_datasets, d)
        self.time_mlp = nn.Sequential(
            nn.Linear(diffusion.time_embed_dim, d), nn.SiLU(), nn.Linear(d, d)
        )
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self._build_trunk()
        self.head = nn.Linear(d, D)
        self.init_weights()

    def init_weights(self) -> None:
        """The trunk's init (N(0, init_std), biases at zero, residual-writing projections scaled by
        1/sqrt(2 n_layer)) and a zero velocity head (DiT): the untrained model predicts v = 0, so
        the first updates are not driven by a random output layer."""
        super().init_weights()
        nn.init.zeros_(self.head.weight)

    @property
    def n_cond_tokens(self) -> int:
        return 1

    # -- forward
    # ------------------------------------------------------------------------------------
    def _positions(self, n_frames: int, grid: tuple[int, ...], device) -> Tensor:
        if len(grid) > self.config.n_spatial_dims:
            raise ValueError(
                f"latent grid {grid}: the model has {self.config.n_spatial_dims} spatial axes"
            )
        return token_positions(1, n_frames, grid, 1 + self.config.n_spatial_dims, device)

    def _embed_frames(self, latents: Tensor) -> Tensor:
        """[B, F, *grid, D] → [B, F*T, d] (input cast to the weights' dtype: DeepSpeed bf16 keeps
        bf16 weights)."""
        return self.tok_embedding(latents.flatten(1, -2).to(self.tok_embedding.weight.dtype))

    def _time_embedding(self, t: Tensor) -> Tensor:
        feats = timestep_features(t, self.diffusion.time_embed_dim).to(
            self.tok_embedding.weight.dtype
        )
        return self.time_mlp(feats)  # [B, d]

    def forward(self, context: Tensor, noisy: Tensor, t: Tensor, dataset_ids: Tensor) -> Tensor:
        """Velocity at the noisy frames. context [B, F_ctx, *grid, D] and noisy [B, F_tgt, *grid, D]
        are in model units (latents × latent_scale), t [B] in [0, 1] → v [B, F_tgt, *grid, D]."""
        B, n_ctx, grid = context.shape[0], context.shape[1], tuple(context.shape[2:-1])
        if noisy.shape[0] != B or tuple(noisy.shape[2:]) != tuple(context.shape[2:]):
            raise ValueError(
                f"noisy {tuple(noisy.shape)} does not match context {tuple(context.shape)}"
            )
        if dataset_ids.shape != (B,):
            raise ValueError(f"dataset_ids: expected shape [{B}], got {tuple(dataset_ids.shape)}")
        n_frames, T = n_ctx + noisy.shape[1], math.prod(grid)
        positions = self._positions(n_frames, grid, context.device)
        self.current_positions = positions  # before the embedding: its hook reads them too
        # one call: one hook output
        frames = self._embed_frames(torch.cat([context, noisy.to(context.dtype)], dim=1))
        time = self._time_embedding(t)[:, None]
        h = torch.cat(
            [
                self.dataset_embedding(dataset_ids)[:, None],
                frames[:, : n_ctx * T],
                frames[:, n_ctx * T :] + time,
            ],
            dim=1,
        )
        h = self._blocks(self.embed_dropout(h), positions, mask=frame_causal_mask(positions[:, 0]))
        v = self.head(h[:, 1 + n_ctx * T :])
        return v.view(noisy.shape)

    def codes_from_ids(self, ids: Tensor) -> Tensor:
        """Token ids [...] → their FSQ codes [..., D] in code units, by the tokenizer's own FSQ."""
        levels = self.diffusion.fsq_levels
        if not levels:
            raise CheckpointError(
                "this diffusion model does not record its tokenizer's FSQ levels "
                "(diffusion.fsq_levels); feed it latents, not token ids"
            )
        return FSQ(levels).to(ids.device).indices_to_codes(ids)

    @torch.no_grad()
    def forward_window(self, window: Tensor, dataset_ids: Tensor) -> Tensor:
        """Teacher-forced pass over a whole window, the probing/steering counterpart of the AR
        forward: window [B, F, *grid] token ids (read as their codes) or [B, F, *grid, D] latents;
        frames 0..F-2 are the context and the last frame sits in the noisy slot at t = 1 (where x_t
        is the data itself). Hook outputs span all F frames, [B, 1 + F*T, d]. Returns the velocity
        at the last frame."""
        latents = self.codes_from_ids(window) if not torch.is_floating_point(window) else window
        scale = self.diffusion.latent_scale
        t = torch.ones(latents.shape[0], device=latents.device)
        return self(
            latents[:, :-1].float() * scale, latents[:, -1:].float() * scale, t, dataset_ids
        )

    # -- training
    # -----------------------------------------------------------------------------------
    def sample_time(self, n: int, device, generator: torch.Generator | None = None) -> Tensor:
        if self.diffusion.time_sampling == "uniform":
            return torch.rand(n, device=device, generator=generator)
        z = torch.randn(n, device=device, generator=generator)
        return torch.sigmoid(self.diffusion.logit_mean + self.diffusion.logit_std * z)

    def loss(
        self,
        context: Tensor,
        target: Tensor,
        dataset_ids: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Flow-matching loss: context [B, F_ctx, *grid, D], target [B, F_tgt, *grid, D] latents in
        code units. x_t = (1 - t) x_0 + t x_1 with x_0 ~ N(0, I), x_1 = target × scale; MSE to the
        velocity x_1 - x_0."""
        scale = self.diffusion.latent_scale
        x1 = target.float() * scale
        x0 = torch.randn(x1.shape, device=x1.device, generator=generator)
        t = self.sample_time(x1.shape[0], x1.device, generator)
        tb = t.view(-1, *([1] * (x1.dim() - 1)))
        xt = (1 - tb) * x0 + tb * x1
        v = self(context.float() * scale, xt, t, dataset_ids)
        return F.mse_loss(v.float(), x1 - x0)

    # -- sampling
    # -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_frames(
        self,
        context: Tensor,
        n_frames: int,
        dataset_ids: Tensor,
        steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        n_context_frames: int | None = None,
        frames_per_call: int = 1,
    ) -> Tensor:
        """Rollout in latent space: context [B, F, *grid, D] (code units) → next n_frames [B, n,
        *grid, D].

        Each call conditions on the newest ``n_context_frames`` frames (default: all given; use the
        training context length) and integrates the ODE from noise for ``frames_per_call`` frames at
        once (at most the training's target frames), appending them, until n_frames exist. ``steps``
        ODE steps of ``sampler`` ("euler": one velocity per step; "heun": two, second order)."""
        steps = self.diffusion.sampling_steps if steps is None else int(steps)
        sampler = sampler or self.diffusion.sampler
        if steps < 1:
            raise ValueError(f"sampling steps: must be >= 1, got {steps}")
        if sampler not in ("euler", "heun"):
            raise ValueError(f"sampler: expected 'euler' or 'heun', got {sampler!r}")
        n_ctx = n_context_frames or context.shape[1]
        if context.shape[1] < n_ctx:
            raise ValueError(
                f"context: {context.shape[1]} latent frames given, the model reads {n_ctx}"
            )
        frames = context.float() * self.diffusion.latent_scale
        remaining = n_frames
        while remaining > 0:
            n_now = min(remaining, frames_per_call)
            new = self._sample_window(
                frames[:, -n_ctx:], n_now, dataset_ids, steps, sampler, generator
            )
            frames = torch.cat([frames, new], dim=1)
            remaining -= n_now
        return frames[:, -n_frames:] / self.diffusion.latent_scale

    def _sample_window(
        self,
        ctx: Tensor,
        n_new: int,
        dataset_ids: Tensor,
        steps: int,
        sampler: str,
        generator: torch.Generator | None,
    ) -> Tensor:
        """ctx [B, F_ctx, *grid, D] model units → n_new frames by integrating dx/dt = v from t=0 to
        1."""
        B, n_ctx, grid, D = ctx.shape[0], ctx.shape[1], tuple(ctx.shape[2:-1]), ctx.shape[-1]
        T = math.prod(grid)
        positions = self._positions(n_ctx + n_new, grid, ctx.device)
        mask = frame_causal_mask(positions[:, 0])
        prefix = 1 + n_ctx * T
        cache = self.new_kv_cache(B, prefix + n_new * T, ctx.device)
        # The context never sees the noisy frames: its keys/values are computed once for all ODE
        # steps.
        self.current_positions = positions[:prefix]
        h = torch.cat(
            [self.dataset_embedding(dataset_ids)[:, None], self._embed_frames(ctx)], dim=1
        )
        self._blocks(h, positions[:prefix], cache, 0, mask[:prefix, :prefix])
        target_pos, target_mask = positions[prefix:], mask[prefix:]

        def velocity(x: Tensor, t: float) -> Tensor:
            self.current_positions = target_pos
            h = (
                self._embed_frames(x)
                + self._time_embedding(torch.full((B,), t, device=x.device))[:, None]
            )
            return (
                self.head(self._blocks(h, target_pos, cache, prefix, target_mask))
                .float()
                .view(x.shape)
            )

        x = torch.randn((B, n_new, *grid, D), device=ctx.device, generator=generator)
        times = torch.linspace(0.0, 1.0, steps + 1).tolist()
        for t0, t1 in zip(times[:-1], times[1:]):
            v0 = velocity(x, t0)
            if sampler == "euler":
                x = x + (t1 - t0) * v0
            else:  # Heun: average the slopes at both ends (trapezoidal predictor-corrector)
                x_pred = x + (t1 - t0) * v0
                x = x + (t1 - t0) * 0.5 * (v0 + velocity(x_pred, t1))
        return x

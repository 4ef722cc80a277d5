"""The model's configs as plain typed data: :class:`ModelConfig` (the ``model:`` section: sizes and
options of the AR and diffusion transformers) and :class:`DiffusionConfig` (the ``diffusion:``
section). They live below the model code so that the run record (:mod:`physfm.core.run_info`) can
carry them typed; the networks that read them are in ``physfm/models/``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from data_pipelines.config import ConfigError


@dataclass
class ModelConfig:
    # Which network trains on these sizes: the AR transformer over token ids (physfm/models/ar.py)
    # or the flow-matching transformer over the tokenizer's continuous latents
    # (physfm/models/diffusion.py, same blocks).
    kind: Literal["ar", "diffusion"] = "ar"
    # How the AR model generates a frame. "next_frame": every token of frame t+1 at once from frames
    # <= t (block-causal attention; the output at (t, p) predicts the token at (t+1, p), so the
    # token in the same place one frame back reaches its successor's prediction directly); one
    # forward pass per frame. "raster": each token from the one before it in the flattened sequence,
    # T decode steps per frame.
    prediction: Literal["raster", "next_frame"] = "raster"
    vocab_size: int = 1000  # tokenizer codebook size, e.g. FSQ levels [8, 5, 5, 5] -> 1000
    # The tokenizer's FSQ levels (prod = vocab_size); needed by head=digits and greedy=mean.
    # Pretraining takes them from the token shards when the tokenizer's make vocab_size codes
    # (physfm/train/data.py).
    fsq_levels: list[int] = field(default_factory=list)
    # AR output head: "vocab" one softmax over every id; "digits" the code's structure (code-vector
    # input embedding, one softmax per FSQ digit with a copy bias; physfm/models/code_head.py),
    # next_frame only.
    head: Literal["vocab", "digits"] = "vocab"
    id_embedding: bool = False  # head=digits: add a per-id table to the per-digit input embedding
    # head=digits: weight of the expected code's squared error in the loss
    code_loss_weight: float = 0.0
    # Greedy decoding (temperature 0): "mode" the most likely code, "mean" each digit's expected
    # value rounded to the nearest level (the MSE-optimal code on the grid; needs fsq_levels).
    greedy: Literal["mode", "mean"] = "mode"
    n_layer: int = 4
    n_head: int = 4
    # grouped-query attention: n_head // n_kv_head query heads share one K/V head
    n_kv_head: int = 2
    d_model: int = 256
    ffn_hidden: int = 768  # SwiGLU hidden width (Llama: ~8/3 d_model)
    # frames per window the model attends over (training window / rollout context)
    max_frames: int = 8
    # token grid per frame (sets max_seq_len)
    grid_shape: list[int] = field(default_factory=lambda: [16, 16])
    # spatial rotary axes; grids with fewer dims leave the rest at position 0
    n_spatial_dims: int = 3
    n_datasets: int = 16  # size of the dataset-conditioning vocabulary (one token per sample)
    n_cond_params: int = 0  # simulation-parameter tokens per sample (0: none)
    # bucket ids per parameter (the caller quantises values, e.g. log-spaced)
    n_param_buckets: int = 0
    # Each axis spans tens of positions (frames, grid cells), not thousands of tokens: a smaller
    # base than Llama's 10000 spends fewer rotary pairs on angles that barely turn across the
    # window.
    rope_theta: float = 1000.0
    norm_eps: float = 1e-5
    # RMSNorm on q and k per head: keeps attention logits bounded at scale (OLMo 2)
    qk_norm: bool = True
    # set by the training layer; recompute each block in backward
    activation_checkpointing: bool = False
    dropout: float = 0.0
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def tokens_per_frame(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def n_cond_tokens(self) -> int:
        return 1 + (self.n_cond_params if self.n_param_buckets > 0 else 0)

    @property
    def max_seq_len(self) -> int:
        return self.n_cond_tokens + self.max_frames * self.tokens_per_frame

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the field; called by ``load_config`` and
        ``Trunk`` (every model)."""
        for name in (
            "vocab_size",
            "n_layer",
            "n_head",
            "n_kv_head",
            "d_model",
            "ffn_hidden",
            "max_frames",
            "n_datasets",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}"
            )
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model.n_head={self.n_head} is not divisible by model.n_kv_head={self.n_kv_head}"
            )
        if not 1 <= self.n_spatial_dims <= 3:
            raise ConfigError(f"model.n_spatial_dims: must be 1, 2 or 3, got {self.n_spatial_dims}")
        if not 1 <= len(self.grid_shape) <= self.n_spatial_dims or min(self.grid_shape) < 1:
            raise ConfigError(
                f"model.grid_shape: {self.grid_shape} needs 1..{self.n_spatial_dims} positive sizes"
            )
        if self.head_dim % 2 or self.head_dim // 2 < 1 + self.n_spatial_dims:
            raise ConfigError(
                f"model: head_dim={self.head_dim} must be even with >= one rotary pair per axis"
            )
        if self.n_cond_params < 0 or self.n_param_buckets < 0:
            raise ConfigError("model.n_cond_params / model.n_param_buckets: must be >= 0")
        if self.prediction not in ("raster", "next_frame"):
            raise ConfigError(
                f"model.prediction: expected 'raster' or 'next_frame', got {self.prediction!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        self._validate_code_head()

    def require_levels(self) -> None:
        """Raise unless the FSQ levels that head=digits / greedy=mean read are known."""
        if (self.head == "digits" or self.greedy == "mean") and not self.fsq_levels:
            raise ConfigError(
                "model.fsq_levels: head=digits and greedy=mean need the tokenizer's FSQ levels"
            )

    def _validate_code_head(self) -> None:
        if self.head not in ("vocab", "digits"):
            raise ConfigError(f"model.head: expected 'vocab' or 'digits', got {self.head!r}")
        if self.greedy not in ("mode", "mean"):
            raise ConfigError(f"model.greedy: expected 'mode' or 'mean', got {self.greedy!r}")
        if self.fsq_levels and math.prod(self.fsq_levels) != self.vocab_size:
            raise ConfigError(
                f"model.fsq_levels: {self.fsq_levels} make {math.prod(self.fsq_levels)} codes, "
                f"model.vocab_size is {self.vocab_size}"
            )
        if self.head == "digits" and self.prediction != "next_frame":
            raise ConfigError("model.head=digits: needs model.prediction=next_frame")
        if self.code_loss_weight < 0:
            raise ConfigError(f"model.code_loss_weight: must be >= 0, got {self.code_loss_weight}")


@dataclass
class DiffusionConfig:
    """Flow-matching settings (the ``diffusion:`` section of a pretrain config; saved in
    run.json)."""

    # channels per latent cell = len(FSQ levels); 0 = take it from the tokenizer
    latent_dim: int = 0
    # Latents live in FSQ code units (~[-1, 1], std ~0.5); scaled by this they match the
    # unit-variance noise, so neither the signal nor the noise dominates the middle of the path.
    latent_scale: float = 2.0
    time_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0  # logit-normal t: sigmoid(N(logit_mean, logit_std))
    logit_std: float = 1.0
    time_embed_dim: int = 256  # sinusoidal features of t, then an MLP to d_model
    sampler: Literal["euler", "heun"] = "euler"  # rollout default (--sampler overrides)
    sampling_steps: int = 4  # rollout default (--sampling-steps overrides)
    snap_to_codes: bool = False  # round sampled latents to the FSQ grid before decoding
    # The tokenizer's FSQ levels (set from it by pretrain): token ids → their codes without the
    # tokenizer, so probing/steering can feed the model token windows (forward_window). [] =
    # unknown.
    fsq_levels: list[int] = field(default_factory=list)

    def validate(self) -> None:
        if self.latent_dim < 0:
            raise ConfigError(
                f"diffusion.latent_dim: must be >= 0 (0 = from the tokenizer), got {self.latent_dim}"
            )
        if self.latent_scale <= 0:
            raise ConfigError(f"diffusion.latent_scale: must be > 0, got {self.latent_scale}")
        if self.logit_std <= 0:
            raise ConfigError(f"diffusion.logit_std: must be > 0, got {self.logit_std}")
        if self.time_embed_dim < 2 or self.time_embed_dim % 2:
            raise ConfigError(
                f"diffusion.time_embed_dim: must be even and >= 2, got {self.time_embed_dim}"
            )
        if self.sampling_steps < 1:
            raise ConfigError(f"diffusion.sampling_steps: must be >= 1, got {self.sampling_steps}")
        if self.fsq_levels and (
            min(self.fsq_levels) < 2 or self.latent_dim not in (0, len(self.fsq_levels))
        ):
            raise ConfigError(
                f"diffusion.fsq_levels: {self.fsq_levels} must be >= 2 each, one per latent channel "
                f"(latent_dim={self.latent_dim})"
            )

"""The typed configs of a training run (``physfm pretrain`` and what builds on it): model, data,
optimiser, trainer, strategy and diffusion sections, validated before any work starts."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

from data_pipelines.clips import window_option
from data_pipelines.config import ConfigError, check_optimizer, load_config
from physfm.models.diffusion import DiffusionConfig
from physfm.models.trunk import ModelConfig
from physfm.train.strategies import StrategyConfig


@dataclass
class TokenDataConfig:
    # token shard sets (dirs or URLs); datasets are mixed
    tokens: list[str] = field(default_factory=list)
    # field shard sets, for model.kind=diffusion (latents on the fly)
    shards: list[str] = field(default_factory=list)
    batch_size: int = 8  # per rank, per micro-batch
    num_workers: int = 1
    # Windows are written file by file; a buffer below a file's window count trains on one file (one
    # regime) at a time (bench/generalization.py's ns32 tokens: 30-step stretches of one viscosity
    # at 256). Token windows are a few KB, so 2,048 per dataset stream per worker costs little
    # memory.
    shuffle_buffer: int = 2048
    dataset_weights: dict[str, float] | None = None  # default: proportional to sample counts
    val_batches: int = 4  # per validation run (0: no validation)
    # corrupt shards: stop naming it, or skip and count
    on_error: Literal["raise", "skip"] = "raise"
    # Windows cut from clip field shards: [n_input, n_output] or [n_input, n_output, stride]; [] =
    # the shards' default (token shards hold fixed windows: choose them when encoding, physfm
    # tokenizer encode --n-input …).
    window: list[int] = field(default_factory=list)

    def validate(self) -> None:
        if not self.tokens and not self.shards:
            raise ConfigError(
                "data.tokens: give at least one token shard directory (physfm tokenizer encode), "
                "or data.shards (field shards) for model.kind=diffusion"
            )
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: must be >= 1, got {self.batch_size}")
        window_option(self.window, "data.window")


@dataclass
class TrainerConfig:
    max_steps: int = 200
    accumulate_grad_batches: int = 1
    # optimiser steps between validation runs (0 or > max_steps: once, at the end)
    val_every: int = 50
    log_every: int = 10
    checkpoint_every: int = 50
    keep_last: int = 3  # checkpoints kept (newest by step)
    nonfinite_loss: Literal["skip", "stop"] = "stop"
    peak_tflops: float = 0.0  # MFU denominator per device; 0 = measure a matmul peak on CPU
    # wandb runs offline unless WANDB_MODE says otherwise
    logger: Literal["wandb", "csv", "none"] = "wandb"
    progress_bar: bool = True
    max_time_s: float = 0.0  # wall-clock cap in seconds (0: none); stops with a final checkpoint

    def validate(self) -> None:
        for name in (
            "max_steps",
            "accumulate_grad_batches",
            "checkpoint_every",
            "keep_last",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class OptimConfig:
    """The ``optim`` section: AdamW (decay on 2-D weights only), linear warmup, cosine decay."""

    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # global-norm clipping; 0 disables

    def validate(self) -> None:
        check_optimizer(self, "optim")


@dataclass
class StabilityConfig:
    """The ``stability`` section: AR training inputs that look like a rollout's, so errors stay
    bounded over many steps (next-frame prediction; physfm/train/module.py). Targets stay the true
    tokens."""

    # Fraction of windows whose frames after the first change frame are replaced by the model's own
    # greedy one-step predictions (pushforward, Brandstetter et al. 2022; no gradient through that
    # step).
    pushforward: float = 0.0
    # Probability per input token (after the key frame) of a +-1 step on one random FSQ digit (needs
    # model.fsq_levels): noise in code space.
    code_noise: float = 0.0
    # Patch jittering on periodic domains: roll each window's token grid by a random multiple of
    # shift[i] tokens along spatial axis i (0 = never along it; [] = off). Shift only by the
    # system's symmetries, e.g. the built-in Navier–Stokes forcing repeats every n/4 cells along its
    # last axis.
    shift: list[int] = field(default_factory=list)

    def validate(self) -> None:
        for name in ("pushforward", "code_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"stability.{name}: must be in [0, 1], got {getattr(self, name)}")
        if any(step < 0 for step in self.shift):
            raise ConfigError(f"stability.shift: token steps must be >= 0, got {self.shift}")


def lr_lambda(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine to ``min_ratio`` (every
    optimiser section here: pretraining, fine-tuning, the refiner)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class PretrainConfig:
    seed: int = 0
    out: str = ""  # run directory; default runs/pretrain-<timestamp>
    # auto: newest complete checkpoint in OUT/checkpoints; none; or a checkpoint path
    resume: str = "auto"
    # the tokenizer checkpoint the token shards were made with (rollout decodes with it)
    tokenizer: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)  # AR rollout training
    # used when model.kind=diffusion
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def validate(self) -> None:
        # The sections validate themselves (data_pipelines.config.validate_tree); here: what spans
        # sections.
        if self.model.kind == "ar" and not self.data.tokens:
            raise ConfigError(
                "data.tokens: model.kind=ar trains on token shards (physfm tokenizer encode)"
            )
        if self.stability.code_noise > 0 and not self.model.fsq_levels:
            raise ConfigError(
                "stability.code_noise: needs model.fsq_levels (the tokenizer's FSQ levels)"
            )
        if self.model.kind == "diffusion":
            if not self.data.shards:
                raise ConfigError(
                    "data.shards: model.kind=diffusion trains on field shards (physfm data shard)"
                )
            if not self.tokenizer:
                raise ConfigError(
                    "tokenizer: model.kind=diffusion needs the tokenizer checkpoint whose latents it models"
                )


def load_pretrain_config(path: str | None, overrides: list[str] | None = None) -> PretrainConfig:
    return load_config(PretrainConfig, path, overrides)


def default_run_dir(verb: str) -> str:
    return f"runs/{verb}-{time.strftime('%Y%m%d-%H%M%S')}"

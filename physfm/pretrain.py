"""``physfm pretrain``: typed config → token loaders → Lightning Trainer → checkpoints, metrics, report.

The same function serves ``physfm pretrain`` on a laptop, ``torchrun``, and the Slurm scripts (Lightning
detects the launcher); ``physfm finetune`` reuses it with a different starting point.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_pipelines.config import ConfigError, to_dict
from physfm.diffusion import DiffusionConfig
from physfm.model import ModelConfig
from physfm.strategies import StrategyConfig


@dataclass
class TokenDataConfig:
    tokens: list[str] = field(default_factory=list)  # token shard sets (dirs or URLs); datasets are mixed
    shards: list[str] = field(default_factory=list)  # field shard sets, for model.kind=diffusion (latents on the fly)
    batch_size: int = 8  # per rank, per micro-batch
    num_workers: int = 1
    shuffle_buffer: int = 256
    dataset_weights: dict[str, float] | None = None  # default: proportional to sample counts
    val_batches: int = 4  # per validation run (0: no validation)
    on_error: Literal["raise", "skip"] = "raise"  # corrupt shards: stop naming it, or skip and count

    def validate(self) -> None:
        if not self.tokens and not self.shards:
            raise ValueError("data.tokens: give at least one token shard directory (physfm tokenizer encode), "
                             "or data.shards (field shards) for model.kind=diffusion")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size: must be >= 1, got {self.batch_size}")


@dataclass
class TrainerConfig:
    max_steps: int = 200
    accumulate_grad_batches: int = 1
    val_every: int = 50  # optimiser steps between validation runs (0 or > max_steps: once, at the end)
    log_every: int = 10
    checkpoint_every: int = 50
    keep_last: int = 3  # checkpoints kept (newest by step)
    nonfinite_loss: Literal["skip", "stop"] = "stop"
    peak_tflops: float = 0.0  # MFU denominator per device; 0 = measure a matmul peak on CPU
    logger: Literal["wandb", "csv", "none"] = "wandb"  # wandb runs offline unless WANDB_MODE says otherwise
    progress_bar: bool = True
    max_time_s: float = 0.0  # wall-clock cap in seconds (0: none); stops with a final checkpoint

    def validate(self) -> None:
        for name in ("max_steps", "accumulate_grad_batches", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class OptimSection:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0


@dataclass
class PretrainConfig:
    seed: int = 0
    out: str = ""  # run directory; default runs/pretrain-<timestamp>
    resume: str = "auto"  # auto: newest complete checkpoint in OUT/checkpoints; none; or a checkpoint path
    tokenizer: str = ""  # the tokenizer checkpoint the token shards were made with (rollout decodes with it)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # used when model.kind=diffusion

    def validate(self) -> None:
        self.strategy.validate()
        if self.model.kind == "ar" and not self.data.tokens:
            raise ConfigError("data.tokens: model.kind=ar trains on token shards (physfm tokenizer encode)")
        if self.model.kind == "diffusion":
            if not self.data.shards:
                raise ConfigError("data.shards: model.kind=diffusion trains on field shards (physfm data shard)")
            if not self.tokenizer:
                raise ConfigError("tokenizer: model.kind=diffusion needs the tokenizer checkpoint whose latents "
                                  "it models")


def load_pretrain_config(path: str | None, overrides: list[str] | None = None) -> PretrainConfig:
    from data_pipelines.config import load_config

    return load_config(PretrainConfig, path, overrides)


def token_layout(manifest: dict[str, Any]) -> tuple[int, int]:
    """(context token frames, total token frames) of each window in a token shard set.

    A causal tokenizer with temporal compression c codes frame 0 alone, then groups of c frames, so
    n frames become 1 + ceil((n - 1) / c) token frames; the context must end on a group boundary."""
    layout = manifest.get("token_layout")
    if layout:
        return int(layout["n_context_frames"]), int(layout["n_frames"])
    c = int(manifest.get("tokenizer", {}).get("temporal_compression", 1))
    n_input, n_total = manifest["n_input"], manifest["n_input"] + manifest["n_output"]
    if (n_input - 1) % c:
        raise ConfigError(f"token shards: {n_input} context frames do not end on a temporal-compression group "
                          f"boundary (compression {c} needs n_input = 1 + k*{c}); re-shard with another --n-input")
    return 1 + (n_input - 1) // c, 1 + math.ceil((n_total - 1) / c)


def describe_tokens(cfg: PretrainConfig) -> dict[str, Any]:
    """Read the token manifests: dataset names, window layout, tokenizer fingerprint; check consistency."""
    from data_pipelines.shards import read_manifest

    names: list[str] = []
    layouts, fingerprints = set(), set()
    for location in cfg.data.tokens:
        manifest = read_manifest(location)
        if "tokenizer_fingerprint" not in manifest:
            raise ConfigError(f"data.tokens: {location} holds no token shards (no tokenizer_fingerprint); "
                              "make them with `physfm tokenizer encode`")
        fingerprints.add(manifest["tokenizer_fingerprint"])
        layouts.add(token_layout(manifest))
        names += list(manifest["datasets"])
    if len(fingerprints) > 1:
        raise ConfigError("data.tokens: the token shard sets were made by different tokenizers")
    if len(layouts) > 1:
        raise ConfigError(f"data.tokens: token shard sets have different window layouts {sorted(layouts)}")
    n_context, n_total = layouts.pop()
    if n_total > cfg.model.max_frames:
        raise ConfigError(f"model.max_frames={cfg.model.max_frames} is shorter than the {n_total}-frame token windows")
    return {"dataset_names": sorted(names), "n_context": n_context, "n_frames": n_total,
            "tokenizer_fingerprint": fingerprints.pop()}


RUN_INFO = "run.json"  # what a checkpoint needs to become a usable model (export, rollout, evaluate)


def run_info(cfg: PretrainConfig, info: dict[str, Any]) -> dict[str, Any]:
    if cfg.model.kind == "diffusion":
        from physfm.diffusion_training import diffusion_run_info
        return diffusion_run_info(cfg, info)
    return {
        "kind": "ar",
        "model": to_dict(cfg.model),
        "dataset_names": info["dataset_names"],
        "n_context_frames": info["n_context"],
        "n_frames": info["n_frames"],
        "tokenizer": cfg.tokenizer,
        "tokenizer_fingerprint": info["tokenizer_fingerprint"],
        "tokens": list(cfg.data.tokens),
    }


def default_run_dir(verb: str) -> str:
    return f"runs/{verb}-{time.strftime('%Y%m%d-%H%M%S')}"


class TokenDataModule:
    """Builds the train/validation loaders; the train stream skips batches already consumed on resume."""

    def __init__(self, cfg: PretrainConfig, total_batches: int):
        self.cfg, self.total_batches = cfg, total_batches

    def train_loader(self, consumed_batches: int):
        from data_pipelines.loader import make_loader

        d = self.cfg.data
        return make_loader(
            d.tokens, "train", d.batch_size, num_workers=d.num_workers, seed=self.cfg.seed, resampled=True,
            batches_per_epoch=self.total_batches, skip_batches=consumed_batches, shuffle_buffer=d.shuffle_buffer,
            dataset_weights=d.dataset_weights, keys=("tokens",), normalize=False, on_error=d.on_error,
        )

    def val_loader(self):
        from data_pipelines.loader import make_loader

        d = self.cfg.data
        return make_loader(
            d.tokens, "valid", d.batch_size, num_workers=0, seed=self.cfg.seed, resampled=True,
            batches_per_epoch=d.val_batches, keys=("tokens",), normalize=False, shuffle_buffer=d.shuffle_buffer,
            dataset_weights=d.dataset_weights,
        )


def build_lightning_module(cfg: PretrainConfig, info: dict[str, Any]):
    if cfg.model.kind == "diffusion":
        from physfm.diffusion_training import build_diffusion_module
        return build_diffusion_module(cfg, info)
    from physfm.training import ARModule

    return ARModule(
        model=to_dict(cfg.model), optim=to_dict(cfg.optim), dataset_names=info["dataset_names"],
        n_context_frames=info["n_context"], max_steps=cfg.trainer.max_steps,
        nonfinite_loss=cfg.trainer.nonfinite_loss, strategy=to_dict(cfg.strategy),
    )


def resolve_resume(cfg: PretrainConfig, out: Path) -> Path | None:
    """The checkpoint a run continues from: the newest complete one (auto), none, or the one named."""
    from physfm.checkpoint import find_latest_checkpoint

    if cfg.resume == "auto":
        return find_latest_checkpoint(out / "checkpoints")
    if cfg.resume == "none":
        return None
    path = Path(cfg.resume)
    if not path.exists():
        raise ConfigError(f"resume: checkpoint {path} not found")
    return path


def build_trainer(cfg: PretrainConfig, out: Path, module, info: dict[str, Any], resume_step: int):
    """(Trainer, throughput monitor, signal handler) for a run: strategy and precision by config."""
    import lightning as L

    from physfm.strategies import build_trainer_kwargs
    from physfm.training import StopOnSignal, ThroughputMonitor, keep_last_checkpoints, measure_matmul_peak

    kwargs = build_trainer_kwargs(cfg.strategy)
    kwargs["plugins"] = [*kwargs["plugins"], *_slurm_environment()]
    if cfg.strategy.name == "deepspeed":  # our loader batches by itself: no batch_sampler for Lightning to read
        kwargs["strategy"].config.setdefault("train_micro_batch_size_per_gpu", cfg.data.batch_size)
    if cfg.strategy.activation_checkpointing:
        module.model.config.activation_checkpointing = True
    world = _world_size(kwargs)
    tokens_per_step = (cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * world
                       * info["n_frames"] * math.prod(cfg.model.grid_shape))
    peak = cfg.trainer.peak_tflops * 1e12 if cfg.trainer.peak_tflops else measure_matmul_peak()
    throughput = ThroughputMonitor(tokens_per_step, module.model.flops_per_token(), peak * world,
                                   every=cfg.trainer.log_every)
    checkpointing = keep_last_checkpoints(out / "checkpoints", cfg.trainer.checkpoint_every, cfg.trainer.keep_last)
    stop_on_signal = StopOnSignal()  # SIGUSR1 → checkpoint, exit code 75; the Slurm scripts then requeue
    trainer = L.Trainer(
        **kwargs,
        max_steps=cfg.trainer.max_steps,
        max_time={"seconds": cfg.trainer.max_time_s} if cfg.trainer.max_time_s > 0 else None,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip or None,
        # Validate every val_every steps, and at least once (at the end) in any run.
        val_check_interval=min(cfg.trainer.val_every or cfg.trainer.max_steps, cfg.trainer.max_steps)
        * cfg.trainer.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.data.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.trainer.log_every,
        callbacks=[stop_on_signal, checkpointing, throughput],
        logger=_logger(cfg, out, first_step=resume_step),
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(out),
        deterministic=False,
        use_distributed_sampler=False,  # the token stream splits by rank itself
    )
    return trainer, throughput, stop_on_signal


def run_pretrain(cfg: PretrainConfig, init_weights: dict[str, Any] | None = None) -> Path:
    """Train; returns the run directory (checkpoints/, metrics.json, report.md, config.yaml)."""
    import lightning as L
    import yaml

    from physfm.checkpoint import atomic_write_text, checkpoint_step
    from physfm.training import TrainingStopped

    out = Path(cfg.out or default_run_dir("pretrain"))
    if cfg.model.kind == "diffusion":
        from physfm.diffusion_training import describe_fields
        info = describe_fields(cfg)
    else:
        info = describe_tokens(cfg)
    if init_weights is not None and init_weights.get("dataset_names"):
        # Fine-tuning keeps the pretrained dataset ids and appends new names (physfm/finetune.py).
        missing = sorted(set(info["dataset_names"]) - set(init_weights["dataset_names"]))
        if missing:
            raise ConfigError(f"data.tokens: datasets {missing} are not in the run's dataset vocabulary")
        info["dataset_names"] = list(init_weights["dataset_names"])
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_lightning_module(cfg, info)
    if init_weights is not None:
        if init_weights.get("state_dict") is not None:
            module.model.load_state_dict(init_weights["state_dict"], strict=init_weights.get("strict", True))
        if init_weights.get("prepare") is not None:  # e.g. freeze blocks or add LoRA adapters before training
            init_weights["prepare"](module.model)

    resume = resolve_resume(cfg, out)
    resume_step = checkpoint_step(resume) if resume else 0
    trainer, throughput, stop_on_signal = build_trainer(cfg, out, module, info, resume_step)
    total_batches = cfg.trainer.max_steps * cfg.trainer.accumulate_grad_batches
    if cfg.model.kind == "diffusion":
        from physfm.diffusion_training import FieldDataModule
        data = FieldDataModule(cfg, total_batches)
    else:
        data = TokenDataModule(cfg, total_batches)
    consumed = resume_step * cfg.trainer.accumulate_grad_batches  # batches this rank's stream skips
    if resume is not None and trainer.is_global_zero:
        print(f"physfm: resuming from {resume} (step {resume_step})", flush=True)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        atomic_write_text(out / RUN_INFO, json.dumps(run_info(cfg, info), indent=1))
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=data.train_loader(consumed),
                val_dataloaders=data.val_loader() if cfg.data.val_batches else None,
                ckpt_path=str(resume) if resume else None)
    stopped_at = stop_on_signal.stopped_at_step
    if trainer.is_global_zero:
        write_run_summary(out, cfg, info, trainer, throughput, time.perf_counter() - start, resume, stopped_at)
    if stopped_at is not None:
        raise TrainingStopped(out, stopped_at, stop_on_signal.signum)
    return out


def _slurm_environment() -> list[Any]:
    """Under Slurm, Lightning's SLURM environment with its auto-requeue off: its SIGUSR1 handler saves
    from inside the signal handler (ranks may be mid-collective) to a path our resume does not search.
    :class:`physfm.training.StopOnSignal` handles the signal instead."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def _world_size(kwargs: dict[str, Any]) -> int:
    world = os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS")
    if world:
        return int(world)
    devices = kwargs.get("devices")
    return (devices if isinstance(devices, int) else 1) * (kwargs.get("num_nodes") or 1)


def _logger(cfg: PretrainConfig, out: Path, first_step: int = 0):
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = []
    if cfg.trainer.logger != "none":
        # One CSV per run segment: Lightning's CSV logger empties an existing file when a run resumes.
        loggers.append(CSVLogger(str(out), name="logs", version=f"from-step-{first_step:07d}"))
    if cfg.trainer.logger == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project="physfm", save_dir=str(out), name=out.name))
    return loggers or False


def write_run_summary(out: Path, cfg: PretrainConfig, info: dict[str, Any], trainer, throughput,
                      seconds: float, resumed_from: Path | None, stopped_at_step: int | None = None) -> None:
    from physfm.checkpoint import atomic_write_text, find_latest_checkpoint

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    summary = {
        "steps": trainer.global_step,
        "seconds": round(seconds, 2),
        "datasets": info["dataset_names"],
        "resumed_from": str(resumed_from) if resumed_from else None,
        "stopped_at_step": stopped_at_step,  # set when a signal stopped the run early (it resumes from there)
        "last_checkpoint": str(find_latest_checkpoint(out / "checkpoints") or ""),
        "n_params": trainer.lightning_module.model.num_params(),
        **{k.replace("/", "_"): round(v, 6) for k, v in {**metrics, **throughput.last}.items()},
        "loss_history": read_loss_history(out),
    }
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=1))
    hist = summary["loss_history"]
    lines = [
        f"# pretrain run {out.name}", "",
        f"{summary['steps']} steps in {seconds:.0f} s, {summary['n_params'] / 1e6:.2f} M parameters, "
        f"datasets: {', '.join(info['dataset_names'])}.", "",
        "| metric | value |", "|---|---:|",
    ]
    for key in ("train_loss", "val_loss", "perf_tokens_per_s", "perf_tflops", "perf_mfu"):
        if key in summary:
            lines.append(f"| {key} | {summary[key]:.4g} |")
    if stopped_at_step is not None:
        lines += ["", f"Stopped early at step {stopped_at_step} on a signal; the same command resumes from its "
                  "checkpoint."]
    if summary.get("data_skipped_samples"):
        lines += ["", f"Skipped {summary['data_skipped_samples']:.0f} corrupt sample(s) (data.on_error=skip); "
                  "the run's log names each shard."]
    if hist:
        lines += ["", f"Train loss: first logged {hist[0][1]:.3f} (step {hist[0][0]}), last {hist[-1][1]:.3f} "
                  f"(step {hist[-1][0]})."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def read_loss_history(out: Path) -> list[tuple[int, float]]:
    """(step, train loss) pairs from the CSV logs of every run segment (empty when CSV logging is off);
    where a resumed segment repeats steps, its values win."""
    import csv

    history: dict[int, float] = {}
    for path in sorted((out / "logs").glob("from-step-*/metrics.csv")):
        with path.open() as fh:
            for row in csv.DictReader(fh):
                if row.get("train/loss"):
                    history[int(row["step"])] = float(row["train/loss"])
    return sorted(history.items())

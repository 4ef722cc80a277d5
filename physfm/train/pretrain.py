"""``physfm pretrain``: typed config → token loaders → Lightning Trainer → checkpoints, metrics,
report.

The same function serves ``physfm pretrain`` on a laptop, ``torchrun``, and the Slurm scripts
(Lightning detects the launcher); ``physfm finetune`` reuses it with a different starting point.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

from data_pipelines.atomic import atomic_write_text
from data_pipelines.config import ConfigError, to_dict
from data_pipelines.run_record import write_metrics
from physfm.core.checkpoint import checkpoint_step, find_latest_checkpoint
from physfm.train.callbacks import (
    StopOnSignal,
    ThroughputMonitor,
    keep_last_checkpoints,
    measure_matmul_peak,
)
from physfm.train.config import PretrainConfig, default_run_dir, load_pretrain_config
from physfm.train.launch import build_trainer_kwargs
from physfm.train.module import TrainingStopped
from physfm.train.recipes import recipe_for

__all__ = ["PretrainConfig", "load_pretrain_config", "run_pretrain"]  # the verb's public face


def resolve_resume(cfg: PretrainConfig, out: Path) -> Path | None:
    """The checkpoint a run continues from: the newest complete one (auto), none, or the one
    named."""
    if cfg.resume == "auto":
        return find_latest_checkpoint(out / "checkpoints")
    if cfg.resume == "none":
        return None
    path = Path(cfg.resume)
    if not path.exists():
        raise ConfigError(f"resume: checkpoint {path} not found")
    return path


def build_trainer(
    cfg: PretrainConfig,
    out: Path,
    module,
    info: dict[str, Any],
    resume_step: int,
    extra_callbacks: list[Any] | None = None,
):
    """(Trainer, throughput monitor, signal handler) for a run: strategy and precision by config;
    ``extra_callbacks`` (fine-tuning's early stopping and best checkpoint) run after ours."""
    import lightning as L

    kwargs = build_trainer_kwargs(cfg.strategy)
    kwargs["plugins"] = [*kwargs["plugins"], *_slurm_environment()]
    # our loader batches by itself: no batch_sampler for Lightning to read
    if cfg.strategy.name == "deepspeed":
        kwargs["strategy"].config.setdefault("train_micro_batch_size_per_gpu", cfg.data.batch_size)
    world = _world_size(kwargs)
    peak = cfg.trainer.peak_tflops * 1e12 if cfg.trainer.peak_tflops else measure_matmul_peak()
    throughput = ThroughputMonitor(
        module.model.flops_per_token, peak * world, world=world, every=cfg.trainer.log_every
    )
    checkpointing = keep_last_checkpoints(
        out / "checkpoints", cfg.trainer.checkpoint_every, cfg.trainer.keep_last
    )
    # SIGUSR1/SIGTERM/SIGINT → checkpoint, exit 75/143/130; the Slurm scripts requeue on 75
    stop_on_signal = StopOnSignal()
    trainer = L.Trainer(
        **kwargs,
        max_steps=cfg.trainer.max_steps,
        max_time={"seconds": cfg.trainer.max_time_s} if cfg.trainer.max_time_s > 0 else None,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip or None,
        # Validate every val_every steps, and at least once (at the end) in any run.
        val_check_interval=min(
            cfg.trainer.val_every or cfg.trainer.max_steps, cfg.trainer.max_steps
        )
        * cfg.trainer.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.data.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.trainer.log_every,
        callbacks=[stop_on_signal, checkpointing, throughput, *(extra_callbacks or [])],
        logger=_logger(cfg, out, first_step=resume_step),
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(out),
        deterministic=False,
        use_distributed_sampler=False,  # the token stream splits by rank itself
    )
    return trainer, throughput, stop_on_signal


def run_pretrain(
    cfg: PretrainConfig,
    init_weights: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
) -> Path:
    """Train; returns the run directory (checkpoints/, metrics.json, report.md, config.yaml).

    ``init_weights`` (fine-tuning): ``state_dict`` to start from, ``dataset_names`` (the vocabulary,
    pretrained names first), ``prepare(model)`` (freeze blocks, add LoRA) and ``param_plan(model) ->
    ParamPlan`` (per-part learning rates, frozen trunk warm-up; physfm/train/param_groups.py).
    ``callbacks``: more Lightning callbacks."""
    import lightning as L
    import yaml

    out = Path(cfg.out or default_run_dir("pretrain"))
    recipe = recipe_for(cfg)
    info = recipe.describe(cfg)
    if init_weights is not None and init_weights.get("dataset_names"):
        # Fine-tuning keeps the pretrained dataset ids and appends new names
        # (physfm/train/finetune.py).
        missing = sorted(set(info["dataset_names"]) - set(init_weights["dataset_names"]))
        if missing:
            raise ConfigError(
                f"data.tokens: datasets {missing} are not in the run's dataset vocabulary"
            )
        info["dataset_names"] = list(init_weights["dataset_names"])
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = recipe.build_module(cfg, info)
    if init_weights is not None:
        if init_weights.get("state_dict") is not None:
            module.model.load_state_dict(
                init_weights["state_dict"], strict=init_weights.get("strict", True)
            )
        # e.g. freeze blocks or add LoRA adapters before training
        if init_weights.get("prepare") is not None:
            init_weights["prepare"](module.model)
        if init_weights.get("param_plan") is not None:
            module.param_plan = init_weights["param_plan"](module.model)

    resume = resolve_resume(cfg, out)
    resume_step = checkpoint_step(resume) if resume else 0
    trainer, throughput, stop_on_signal = build_trainer(
        cfg, out, module, info, resume_step, callbacks
    )
    total_batches = cfg.trainer.max_steps * cfg.trainer.accumulate_grad_batches
    data = recipe.data_module(cfg, total_batches)
    consumed = resume_step * cfg.trainer.accumulate_grad_batches  # batches this rank's stream skips
    if resume is not None and trainer.is_global_zero:
        print(f"physfm: resuming from {resume} (step {resume_step})", flush=True)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        recipe.run_info(cfg, info).write(out)
    start = time.perf_counter()
    try:
        trainer.fit(
            module,
            train_dataloaders=data.train_loader(consumed),
            val_dataloaders=data.val_loader() if cfg.data.val_batches else None,
            ckpt_path=str(resume) if resume else None,
        )
    finally:
        stop_on_signal.restore()  # a failed run must not leave our handlers installed
    stopped_at = stop_on_signal.stopped_at_step
    stopped_by = stop_on_signal.signal_name if stopped_at is not None else None
    if trainer.is_global_zero:
        seconds = time.perf_counter() - start
        write_run_summary(
            out, cfg, info, trainer, throughput, seconds, resume, stopped_at, stopped_by
        )
    if stopped_at is not None:
        raise TrainingStopped(out, stopped_at, stop_on_signal.signum)
    return out


def _slurm_environment() -> list[Any]:
    """Under Slurm, Lightning's SLURM environment with its auto-requeue off: its SIGUSR1 handler
    saves from inside the signal handler (ranks may be mid-collective) to a path our resume does not
    search. :class:`physfm.train.module.StopOnSignal` handles the signal instead."""
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
        # One CSV per run segment: Lightning's CSV logger empties an existing file when a run
        # resumes.
        loggers.append(CSVLogger(str(out), name="logs", version=f"from-step-{first_step:07d}"))
    if cfg.trainer.logger == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project="physfm", save_dir=str(out), name=out.name))
    return loggers or False


def write_run_summary(
    out: Path,
    cfg: PretrainConfig,
    info: dict[str, Any],
    trainer,
    throughput,
    seconds: float,
    resumed_from: Path | None,
    stopped_at_step: int | None = None,
    stopped_by: str | None = None,
) -> None:
    metrics = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if getattr(v, "numel", lambda: 1)() == 1
    }
    summary = {
        "steps": trainer.global_step,
        "seconds": round(seconds, 2),
        "datasets": info["dataset_names"],
        "resumed_from": str(resumed_from) if resumed_from else None,
        # set when a signal stopped the run early (it resumes from there)
        "stopped_at_step": stopped_at_step,
        "stopped_by": stopped_by,  # that signal's name
        "last_checkpoint": str(find_latest_checkpoint(out / "checkpoints") or ""),
        "n_params": trainer.lightning_module.model.num_params(),
        # this run segment's (a resumed run counts from the resume)
        "tokens_trained": throughput.tokens_trained,
        **{k.replace("/", "_"): round(v, 6) for k, v in {**metrics, **throughput.last}.items()},
        "loss_history": read_loss_history(out),
        "val_loss_history": read_loss_history(out, "val/loss"),  # one pair per validation run
    }
    write_metrics(out / "metrics.json", summary)
    hist = summary["loss_history"]
    lines = [
        f"# pretrain run {out.name}",
        "",
        f"{summary['steps']} steps in {seconds:.0f} s, {summary['n_params'] / 1e6:.2f} M parameters, "
        f"datasets: {', '.join(info['dataset_names'])}.",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    for key in ("train_loss", "val_loss", "perf_tokens_per_s", "perf_tflops", "perf_mfu"):
        if key in summary:
            lines.append(f"| {key} | {summary[key]:.4g} |")
    if stopped_at_step is not None:
        lines += [
            "",
            f"Stopped early at step {stopped_at_step} on {stopped_by or 'a signal'}; the same command resumes "
            "from its checkpoint.",
        ]
    if summary.get("data_skipped_samples"):
        lines += [
            "",
            f"Skipped {summary['data_skipped_samples']:.0f} corrupt sample(s) (data.on_error=skip); "
            "the run's log names each shard.",
        ]
    if hist:
        lines += [
            "",
            f"Train loss: first logged {hist[0][1]:.3f} (step {hist[0][0]}), last {hist[-1][1]:.3f} "
            f"(step {hist[-1][0]}).",
        ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def read_loss_history(out: Path, key: str = "train/loss") -> list[tuple[int, float]]:
    """(step, ``key``'s value) pairs from the CSV logs of every run segment (empty when CSV logging
    is off); where a resumed segment repeats steps, its values win."""
    history: dict[int, float] = {}
    for path in sorted((out / "logs").glob("from-step-*/metrics.csv")):
        with path.open() as fh:
            for row in csv.DictReader(fh):
                if row.get(key):
                    history[int(row["step"])] = float(row[key])
    return sorted(history.items())

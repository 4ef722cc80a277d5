"""Training layer for the AR physics transformer: LightningModule, token data module, callbacks.

The model (``physfm.model``) is plain PyTorch; this module wraps it for Lightning.  Parallelism and
precision come from ``physfm.strategies`` by config.  What lives here:

* next-token loss over the target frames of each token window (context frames carry no loss);
* AdamW (decay on 2-D weights only) with linear warmup then cosine decay to ``min_lr_ratio``;
* the non-finite-loss guard: the flag is all-reduced so every rank takes the same decision; ``stop``
  raises :class:`NonFiniteLoss` (no checkpoint is written from a poisoned state), ``skip`` runs a
  zero-gradient step at learning rate 0 for that batch — weights are untouched — and counts it;
* the count of corrupt samples the loaders skipped (``data.on_error=skip``), summed over ranks in the
  guard's all-reduce and logged as ``data/skipped_samples`` (so it reaches metrics.json);
* RNG state in checkpoints and the data position (batches consumed) so a resumed run continues the
  uninterrupted run's stream bit for bit on CPU;
* throughput logging: tokens/s, achieved TFLOP/s and MFU against a configured (or measured) peak.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from physfm.model import IGNORE_INDEX, ModelConfig, PhysicsTransformer


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/Inf loss and the guard is set to stop."""


# EX_TEMPFAIL (sysexits.h): the run stopped early on purpose with a checkpoint; running it again continues.
# The Slurm scripts requeue the job on this exit code.
STOPPED_EXIT_CODE = 75


class TrainingStopped(RuntimeError):
    """Training stopped early on a signal (Slurm's ``--signal=USR1@T`` ahead of the time limit) after
    writing a checkpoint at ``step``; the same command resumes from it (``resume: auto``)."""

    exit_code = STOPPED_EXIT_CODE

    def __init__(self, out: Any, step: int, signum: int):
        super().__init__(f"stopped at step {step} on signal {signal.Signals(signum).name}; "
                         f"a checkpoint is in {out}/checkpoints and the same command resumes from it")
        self.out, self.step, self.signum = out, step, signum


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # global-norm clipping; 0 disables

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr: must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas: expected two values, got {self.betas}")


def lr_lambda(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def window_to_sequence(tokens: torch.Tensor, n_context: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """tokens [B, F, *grid] → (idx [B, F*T], targets [B, F*T] with the context frames ignored, grid)."""
    B, F = tokens.shape[:2]
    grid = tuple(tokens.shape[2:])
    idx = tokens.reshape(B, -1).long()
    targets = idx.clone()
    targets[:, : n_context * math.prod(grid)] = IGNORE_INDEX
    return idx, targets, grid


class ARModule(L.LightningModule):
    """The AR transformer under Lightning: loss, optimiser, schedule, guard, RNG in checkpoints."""

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        dataset_names: list[str],
        n_context_frames: int,
        max_steps: int,
        nonfinite_loss: Literal["skip", "stop"] = "stop",
        strategy: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model_config = ModelConfig(**model)
        self.optim_config = OptimConfig(**optim)
        self.model = self.build_model()
        self.dataset_names = list(dataset_names)
        self.n_context_frames = n_context_frames
        self.skipped_batches = 0
        self.skipped_samples = 0  # corrupt samples the loaders skipped (data.on_error=skip), all ranks

    def build_model(self) -> torch.nn.Module:
        """The network trained here; subclasses train others with the same loop (physfm/diffusion_training.py)."""
        return PhysicsTransformer(self.model_config)

    def dataset_ids(self, names: list[str] | str, batch_size: int) -> torch.Tensor:
        names = [names] * batch_size if isinstance(names, str) else names
        unknown = [n for n in names if n not in self.dataset_names]
        if unknown:
            raise ValueError(f"dataset {unknown[0]!r} is unknown to this model (knows: {self.dataset_names})")
        return torch.tensor([self.dataset_names.index(n) for n in names], device=self.device)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        tokens = batch["tokens"]
        idx, targets, grid = window_to_sequence(tokens, self.n_context_frames)
        ids = self.dataset_ids(batch["dataset"], tokens.shape[0])
        _, loss = self.model(idx, grid, ids, targets=targets, return_logits=False)
        return loss

    def _all_finite(self, loss: torch.Tensor, new_skipped_samples: int = 0) -> bool:
        """Whether the loss is finite on every rank.  The same all-reduce sums the samples the loaders
        skipped since the last step (``batch["skipped_new"]``) into ``skipped_samples``."""
        flags = torch.stack([(~torch.isfinite(loss.detach())).float().reshape(()),
                             torch.tensor(float(new_skipped_samples), device=loss.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags)  # every rank must take the same branch, or DDP hangs
        bad, new = flags.tolist()
        if new:
            self.skipped_samples += int(new)
            if self.trainer.is_global_zero:  # never silent: the loader's warnings name each shard
                print(f"physfm: {self.skipped_samples} corrupt sample(s) skipped so far (data.on_error=skip)",
                      file=sys.stderr, flush=True)
        return bad == 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        finite = self._all_finite(loss, int(batch.get("skipped_new", 0)))
        self.log("data/skipped_samples", float(self.skipped_samples), rank_zero_only=True)
        if not finite:
            if self.hparams.nonfinite_loss == "stop":
                value = loss.item() if not torch.isfinite(loss.detach()) else "on another rank"
                raise NonFiniteLoss(
                    f"non-finite loss ({value}) at step {self.global_step} on dataset {batch['dataset']!r}; "
                    "stopped without writing a checkpoint (set trainer.nonfinite_loss=skip to skip such batches)"
                )
            self.skipped_batches += 1
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = 0.0  # the scheduler restores the schedule's value at the next step
            # Zero gradients that never touch the poisoned activations: keeps collectives in step.
            loss = sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)
            self.log("train/skipped_batches", float(self.skipped_batches), rank_zero_only=True)
            return loss
        self.log("train/loss", loss.detach(), prog_bar=True, sync_dist=False, rank_zero_only=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["tokens"].shape[0])
        return loss

    def configure_optimizers(self):
        from physfm.strategies import StrategyConfig, build_optimizer

        cfg = self.optim_config
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        strategy = StrategyConfig(**(self.hparams.strategy or {}))
        optimizer = build_optimizer(strategy, groups, lr=cfg.lr, betas=tuple(cfg.betas))
        max_steps = self.hparams.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, max_steps, cfg.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name, p in self.named_parameters():
            if p.numel() and not torch.isfinite(p.detach()).all():
                raise NonFiniteLoss(f"refusing to write a checkpoint: parameter {name} holds NaN/Inf")
        checkpoint["physfm"] = {
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state()[1].tolist(),
                "numpy_pos": int(np.random.get_state()[2]),
                "python": repr(random.getstate()),
            },
            "skipped_batches": self.skipped_batches,
            "skipped_samples": self.skipped_samples,
            "dataset_names": self.dataset_names,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("physfm")
        if not state:
            return
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self.skipped_samples = int(state.get("skipped_samples", 0))
        rng = state["rng"]
        torch.set_rng_state(torch.as_tensor(rng["torch"], dtype=torch.uint8))
        np.random.set_state(("MT19937", np.asarray(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
        import ast

        version, internal, gauss = ast.literal_eval(rng["python"])
        random.setstate((version, tuple(internal), gauss))


class ThroughputMonitor(L.Callback):
    """Logs tokens/s, achieved TFLOP/s and MFU every ``every`` optimiser steps (rank 0)."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float, every: int = 10):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.every = peak_flops, every
        self._t0: float | None = None
        self._step0 = 0
        self.last: dict[str, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self._t0 is None:  # the first step includes start-up; measure from its end
            self._t0, self._step0 = time.perf_counter(), step
            return
        if step - self._step0 >= self.every:
            elapsed = time.perf_counter() - self._t0
            tokens_per_s = (step - self._step0) * self.tokens_per_step / elapsed
            flops = tokens_per_s * self.flops_per_token
            self.last = {"perf/tokens_per_s": tokens_per_s, "perf/tflops": flops / 1e12,
                         "perf/mfu": flops / self.peak_flops if self.peak_flops else 0.0}
            pl_module.log_dict(self.last, rank_zero_only=True)
            self._t0, self._step0 = time.perf_counter(), step


def measure_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5) -> float:
    """Achievable matmul FLOP/s on this CPU (the MFU denominator when no peak is configured)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


class StopOnSignal(L.Callback):
    """Stop cleanly after the current optimiser step when the process gets ``signum`` (default SIGUSR1,
    what Slurm's ``--signal=USR1@90`` sends 90 s before the time limit); the checkpoint callback then
    saves the final step at train end, into the directory a resume searches.

    The handler only sets a flag.  Saving from inside it (Lightning's SLURM auto-requeue does) can run
    collectives while other ranks are mid-step, and writes ``hpc_ckpt_*.ckpt`` where our resume does not
    look.  Ranks agree on the flag with a max all-reduce at each optimiser-step boundary, so all stop after
    the same step even if only some received the signal.
    """

    def __init__(self, signum: int = signal.SIGUSR1):
        self.signum = signum
        self.received = False
        self.stopped_at_step: int | None = None
        self._checked_step = -1
        self._previous: Any = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = signal.signal(self.signum, self._on_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # a failed run must not leave our handler installed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._checked_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._checked_step:
            return  # mid gradient accumulation: a checkpoint here could not be resumed exactly
        self._checked_step = trainer.global_step
        flag = torch.tensor([1.0 if self.received else 0.0], device=pl_module.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            self.stopped_at_step = trainer.global_step
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(f"physfm: signal {signal.Signals(self.signum).name} received: stopping after step "
                      f"{trainer.global_step} and saving a checkpoint", flush=True)


def keep_last_checkpoints(dirpath, every_n_steps: int, keep_last: int) -> L.Callback:
    """Save every ``every_n_steps`` optimiser steps (and at the last step), keep the newest ``keep_last``.

    Lightning's own top-k needs a monitored metric and then defers the last step's save to a validation
    run that may never come; here the step is the order, and pruning leaves only complete checkpoints.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from physfm.checkpoint import is_complete, prune_checkpoints

    class KeepLast(ModelCheckpoint):
        def file_exists(self, filepath, trainer) -> bool:
            # A half-written file under this name (a crashed non-atomic copy; ours are atomic) is replaced,
            # not dodged with a "-v1" twin while the broken one stays beside it.
            local = trainer.is_global_zero and self._fs.exists(filepath) and is_complete(filepath)
            return trainer.strategy.reduce_boolean_decision(local, all=False)

        def _save_checkpoint(self, trainer, filepath: str) -> None:
            super()._save_checkpoint(trainer, filepath)
            if trainer.is_global_zero:
                prune_checkpoints(self.dirpath, keep_last)

        def on_train_end(self, trainer, pl_module) -> None:
            if trainer.global_step and not self._should_skip_saving_checkpoint(trainer):
                self._save_checkpoint(trainer, self._get_metric_interpolated_filepath_name(
                    self._monitor_candidates(trainer), trainer))
                self._last_global_step_saved = trainer.global_step

    return KeepLast(dirpath=dirpath, filename="step={step:07d}", auto_insert_metric_name=False,
                    every_n_train_steps=every_n_steps, save_top_k=-1, monitor=None, save_last=False)

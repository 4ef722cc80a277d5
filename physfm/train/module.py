"""Training layer for the AR physics transformer: LightningModule, token data module, callbacks.

The model (``physfm.models.ar``) is plain PyTorch; this module wraps it for Lightning.  Parallelism
and precision come from ``physfm.train.strategies`` by config.  What lives here:

* next-token loss over the target frames of each token window (context frames carry no loss);
* AdamW (decay on 2-D weights only) with linear warmup then cosine decay to ``min_lr_ratio``;
* the non-finite-loss guard: the flag is all-reduced so every rank takes the same decision; ``stop``
  raises :class:`NonFiniteLoss` (no checkpoint is written from a poisoned state), ``skip`` runs a
  zero-gradient step at learning rate 0 for that batch — weights are untouched — and counts it;
* the count of corrupt samples the loaders skipped (``data.on_error=skip``), summed over ranks in
  the guard's all-reduce and logged as ``data/skipped_samples`` (so it reaches metrics.json);
* RNG state in checkpoints and the data position (batches consumed) so a resumed run continues the
  uninterrupted run's stream bit for bit on CPU;
* throughput logging: tokens/s, achieved TFLOP/s and MFU against a configured (or measured) peak.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import random
import signal
import sys
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from data_pipelines.errors import DataError
from physfm.core.errors import RunStopped
from physfm.core.token_ids import check_token_ids
from physfm.models.ar import IGNORE_INDEX, PhysicsTransformer
from physfm.models.trunk import ModelConfig
from physfm.train.config import OptimConfig, StabilityConfig
from physfm.train.param_groups import ParamPlan, drop_frozen_grads, group_lr_lambdas, param_groups
from physfm.train.stability import code_noise, pushforward_inputs, shift_tokens
from physfm.train.strategies import StrategyConfig, build_optimizer


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/Inf loss and the guard is set to stop."""


# EX_TEMPFAIL (sysexits.h): the run stopped early on purpose with a checkpoint; running it again
# continues. The Slurm scripts requeue the job on this exit code (what SIGUSR1, sent ahead of the
# time limit, ends in).
STOPPED_EXIT_CODE = 75
# The signals that stop a run after the current optimiser step with a checkpoint: SIGUSR1 (Slurm's
# ``--signal=USR1@90``), SIGTERM (a scheduler's preemption or time limit, ``kill``) and SIGINT
# (Ctrl-C).
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def stop_exit_code(signum: int) -> int:
    """75 for SIGUSR1 (requeue); 128 + the signal's number otherwise (143 SIGTERM, 130 SIGINT), what
    a shell reports for a process that signal ended, so no caller can take a stopped run for a
    finished one."""
    return STOPPED_EXIT_CODE if signum == signal.SIGUSR1 else 128 + int(signum)


class TrainingStopped(RunStopped, RuntimeError):
    """Training stopped early on a signal (:data:`STOP_SIGNALS`) after writing a checkpoint at
    ``step``; the same command resumes from it (``resume: auto``).  ``exit_code`` says which
    signal."""

    def __init__(self, out: Any, step: int, signum: int):
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped at step {step} on {name}; a checkpoint is in {out}/checkpoints and the same command "
            "resumes from it"
        )
        self.out, self.step, self.signum = out, step, signum
        self.exit_code = stop_exit_code(signum)


def window_to_sequence(
    tokens: torch.Tensor, n_context: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """tokens [B, F, *grid] → (idx [B, F*T], targets [B, F*T] with the context frames ignored,
    grid)."""
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
        model: ModelConfig,
        optim: dict[str, Any],
        dataset_names: list[str],
        n_context_frames: int,
        max_steps: int,
        nonfinite_loss: Literal["skip", "stop"] = "stop",
        strategy: dict[str, Any] | None = None,
        conditional_tokens: bool = False,
        stability: dict[str, Any] | None = None,
    ):
        """``conditional_tokens``: the token windows open with a key frame coded on its own, the
        later frames as changes given the frame before (a conditional tokenizer). ``stability``: the
        rollout-training options (:class:`StabilityConfig`; next-frame prediction only)."""
        super().__init__()
        # The model config stays typed here; the hparams (hparams.yaml, W&B, checkpoints) get a
        # plain-data copy of it for loggers, never read back (run.json is the record a run is
        # rebuilt from).
        self.save_hyperparameters(ignore=["model"])
        self.model_config = model
        self.hparams["model"] = dataclasses.asdict(self.model_config)
        self.optim_config = OptimConfig(**optim)
        self.model = self.build_model()
        self.dataset_names = list(dataset_names)
        self.n_context_frames = n_context_frames
        self.conditional_tokens = conditional_tokens
        self.stability = StabilityConfig(**(stability or {}))
        self.skipped_batches = 0
        # corrupt samples the loaders skipped (data.on_error=skip), all ranks
        self.skipped_samples = 0
        # Fine-tuning's per-part learning rates and frozen trunk warm-up (physfm/train/finetune.py
        # sets it before training); None: one learning rate for every parameter.
        self.param_plan: ParamPlan | None = None

    def build_model(self) -> torch.nn.Module:
        """The network trained here; subclasses train others with the same loop
        (physfm/train/diffusion.py)."""
        return PhysicsTransformer(self.model_config)

    def dataset_ids(self, names: list[str] | str, batch_size: int) -> torch.Tensor:
        names = [names] * batch_size if isinstance(names, str) else names
        unknown = [n for n in names if n not in self.dataset_names]
        if unknown:
            raise DataError(
                f"dataset {unknown[0]!r} is unknown to this model (knows: {self.dataset_names})"
            )
        return torch.tensor([self.dataset_names.index(n) for n in names], device=self.device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # On the host, before the batch moves to the accelerator (where a bad id is a device
        # assert).
        if isinstance(batch, dict) and "tokens" in batch:
            check_token_ids(
                batch["tokens"],
                self.model_config.vocab_size,
                f"data.tokens (dataset {batch['dataset']!r})",
            )
        return batch

    def batch_tokens(self, batch: dict[str, Any]) -> tuple[int, int]:
        """(frame tokens in ``batch``, sequence length of one sample with its conditioning tokens):
        what a step trained on, for the throughput and MFU figures (each batch carries its own
        grid)."""
        tokens = batch["tokens"]  # [B, F, *grid]
        per_sample = tokens[0].numel()
        return tokens.shape[0] * per_sample, per_sample + self.model.n_cond_tokens

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        tokens = batch["tokens"]
        # Raster mode learns the target frames only; next-frame mode learns every frame after the
        # first (each frame is a training example for the same one-step map, at no extra cost). With
        # conditional tokens and a context of two or more frames it skips the second frame too: that
        # frame's change tokens follow the key frame's absolute ones, a step no rollout then takes
        # (rollouts predict from a full context, whose last frame is a change) and one whose "copy
        # the token before" prior is wrong, so learning it fights the copy-token start. With one
        # context frame every rollout step is that step.
        if self.model_config.prediction == "next_frame":
            skip_key_step = (
                self.conditional_tokens and self.n_context_frames >= 2 and tokens.shape[1] > 2
            )
            n_unsupervised = 2 if skip_key_step else 1
        else:
            n_unsupervised = self.n_context_frames
        ids = self.dataset_ids(batch["dataset"], tokens.shape[0])
        if self.training and self.model_config.prediction == "next_frame":
            tokens = tokens.long()
            if self.stability.shift:
                tokens = shift_tokens(tokens.cpu(), self.stability.shift, self._stability_rng()).to(
                    tokens.device
                )
            idx, targets, grid = window_to_sequence(tokens, n_unsupervised)
            idx = self._rollout_like_inputs(idx, grid, ids, n_unsupervised)
        else:
            idx, targets, grid = window_to_sequence(tokens, n_unsupervised)
        _, loss = self.model(idx, grid, ids, targets=targets, return_logits=False)
        return loss

    def _rollout_like_inputs(
        self, idx: torch.Tensor, grid: tuple[int, ...], ids: torch.Tensor, first: int
    ):
        """The ``stability`` options on a training batch's inputs (targets were taken before):
        frames from ``first`` (the first supervised frame) on become the model's own predictions in
        a ``pushforward`` fraction of the windows; ``code_noise`` perturbs tokens after the key
        frame."""
        stab, T = self.stability, math.prod(grid)
        if stab.pushforward > 0 and idx.shape[1] // T > first:
            rows = torch.rand(idx.shape[0], generator=self._stability_rng()) < stab.pushforward
            idx = pushforward_inputs(self.model, idx, grid, ids, first, rows.to(idx.device))
        if stab.code_noise > 0:
            idx = code_noise(
                idx.cpu(), self.model_config.fsq_levels, stab.code_noise, T, self._stability_rng()
            )
        return idx.to(ids.device)

    def _stability_rng(self) -> torch.Generator:
        """The stability draws' own generator, seeded by the step: a resumed run draws what the
        uninterrupted one drew, whatever else consumed the global RNG."""
        return torch.Generator().manual_seed(
            1_000_003 * (self.global_step + 1) + torch.initial_seed() % 1_000_003
        )

    def _all_finite(self, loss: torch.Tensor, new_skipped_samples: int = 0) -> bool:
        """Whether the loss is finite on every rank.  The same all-reduce sums the samples the
        loaders skipped since the last step (``batch["skipped_new"]``) into ``skipped_samples``."""
        flags = torch.stack(
            [
                (~torch.isfinite(loss.detach())).float().reshape(()),
                torch.tensor(float(new_skipped_samples), device=loss.device),
            ]
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank must take the same branch, or DDP hangs
            torch.distributed.all_reduce(flags)
        bad, new = flags.tolist()
        if new:
            self.skipped_samples += int(new)
            if self.trainer.is_global_zero:  # never silent: the loader's warnings name each shard
                print(
                    f"physfm: {self.skipped_samples} corrupt sample(s) skipped so far (data.on_error=skip)",
                    file=sys.stderr,
                    flush=True,
                )
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
                    # the scheduler restores the schedule's value at the next step
                    group["lr"] = 0.0
            # Zero gradients that never touch the poisoned activations: keeps collectives in step.
            loss = sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)
            self.log("train/skipped_batches", float(self.skipped_batches), rank_zero_only=True)
            return loss
        self.log("train/loss", loss.detach(), prog_bar=True, sync_dist=False, rank_zero_only=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log(
            "val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["tokens"].shape[0]
        )
        return loss

    def configure_optimizers(self):
        cfg = self.optim_config
        # the model's own names (a wrapper's prefix would not match the plan's)
        groups = param_groups(self.model.named_parameters(), self.param_plan, cfg.weight_decay)
        for group in groups:
            group["lr"] = cfg.lr * group["lr_scale"]
        strategy = StrategyConfig(**(self.hparams.strategy or {}))
        optimizer = build_optimizer(strategy, groups, lr=cfg.lr, betas=tuple(cfg.betas))
        lambdas = group_lr_lambdas(
            groups, self.param_plan, cfg.warmup_steps, self.hparams.max_steps, cfg.min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this after backward (and DDP's all-reduce), before clipping. DeepSpeed
        # keeps gradients in its own buffers: there the frozen trunk's learning rate of 0 alone
        # holds it still.
        if StrategyConfig(**(self.hparams.strategy or {})).name != "deepspeed":
            drop_frozen_grads(optimizer, self.param_plan, self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name, p in self.named_parameters():
            if p.numel() and not torch.isfinite(p.detach()).all():
                raise NonFiniteLoss(
                    f"refusing to write a checkpoint: parameter {name} holds NaN/Inf"
                )
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
        np.random.set_state(
            ("MT19937", np.asarray(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0)
        )

        version, internal, gauss = ast.literal_eval(rng["python"])
        random.setstate((version, tuple(internal), gauss))

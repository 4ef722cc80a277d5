"""Training callbacks: throughput/MFU, a clean stop on a signal, keep-last-k checkpoints."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from physfm.core.checkpoint import is_complete, prune_checkpoints


class ThroughputMonitor(L.Callback):
    """Logs tokens/s, achieved TFLOP/s and MFU every ``every`` optimiser steps (rank 0).

    Tokens are counted from the batches trained on (``pl_module.batch_tokens``), not from the config: the
    model positions tokens by each batch's own grid, so a token set whose grid differs from
    ``model.grid_shape`` (or a mix of grids) trains fine, and only its real tokens may count.  FLOPs per
    token follow each batch's sequence length (the attention term).  Rank 0's count is scaled by ``world``
    (the ranks read same-sized batches; an all-reduce here would add a collective to every step)."""

    def __init__(self, flops_per_token: Callable[[int], float], peak_flops: float, world: int = 1, every: int = 10):
        self.flops_per_token, self.peak_flops, self.world, self.every = flops_per_token, peak_flops, world, every
        self._t0: float | None = None
        self._step0 = 0
        self._tokens = 0.0
        self._flops = 0.0
        self.tokens_trained = 0  # every batch of this process's run segment, the first step's included
        self.last: dict[str, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        n_tokens, seq_len = pl_module.batch_tokens(batch)
        self.tokens_trained += n_tokens * self.world
        if self._t0 is None:  # the first step includes start-up; measure from its end
            self._t0, self._step0 = time.perf_counter(), step
            return
        self._tokens += n_tokens * self.world
        self._flops += n_tokens * self.world * self.flops_per_token(seq_len)
        if step - self._step0 >= self.every:
            elapsed = time.perf_counter() - self._t0
            flops = self._flops / elapsed
            self.last = {
                "perf/tokens_per_s": self._tokens / elapsed,
                "perf/tflops": flops / 1e12,
                "perf/mfu": flops / self.peak_flops if self.peak_flops else 0.0,
            }
            pl_module.log_dict(self.last, rank_zero_only=True)
            self._t0, self._step0, self._tokens, self._flops = time.perf_counter(), step, 0.0, 0.0


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
                print(
                    f"physfm: signal {signal.Signals(self.signum).name} received: stopping after step "
                    f"{trainer.global_step} and saving a checkpoint",
                    flush=True,
                )


def keep_last_checkpoints(dirpath, every_n_steps: int, keep_last: int) -> L.Callback:
    """Save every ``every_n_steps`` optimiser steps (and at the last step), keep the newest ``keep_last``.

    Lightning's own top-k needs a monitored metric and then defers the last step's save to a validation
    run that may never come; here the step is the order, and pruning leaves only complete checkpoints.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

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
                self._save_checkpoint(
                    trainer, self._get_metric_interpolated_filepath_name(self._monitor_candidates(trainer), trainer)
                )
                self._last_global_step_saved = trainer.global_step

    return KeepLast(
        dirpath=dirpath,
        filename="step={step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=every_n_steps,
        save_top_k=-1,
        monitor=None,
        save_last=False,
    )

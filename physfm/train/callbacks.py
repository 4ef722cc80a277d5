"""Training callbacks: throughput/MFU, a clean stop on a signal, keep-last-k checkpoints."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from physfm.core.checkpoint import is_complete, prune_checkpoints
from physfm.train.module import STOP_SIGNALS, stop_exit_code


class ThroughputMonitor(L.Callback):
    """Logs tokens/s, achieved TFLOP/s and MFU every ``every`` optimiser steps (rank 0).

    Tokens are counted from the batches trained on (``pl_module.batch_tokens``), not from the
    config: the model positions tokens by each batch's own grid, so a token set whose grid differs
    from ``model.grid_shape`` (or a mix of grids) trains fine, and only its real tokens may count.
    FLOPs per token follow each batch's sequence length (the attention term).  Rank 0's count is
    scaled by ``world`` (the ranks read same-sized batches; an all-reduce here would add a
    collective to every step)."""

    def __init__(
        self,
        flops_per_token: Callable[[int], float],
        peak_flops: float,
        world: int = 1,
        every: int = 10,
    ):
        self.flops_per_token, self.peak_flops, self.world, self.every = (
            flops_per_token,
            peak_flops,
            world,
            every,
        )
        self._t0: float | None = None
        self._step0 = 0
        self._tokens = 0.0
        self._flops = 0.0
        # every batch of this process's run segment, the first step's included
        self.tokens_trained = 0
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


def measure_matmul_peak(
    dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5
) -> float:
    """Achievable matmul FLOP/s on this CPU (the MFU denominator when no peak is configured)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


class StopOnSignal(L.Callback):
    """Stop cleanly after the current optimiser step on SIGUSR1, SIGTERM or SIGINT; the checkpoint
    callback then saves the final step at train end, into the directory a resume searches, and the
    run raises :class:`physfm.train.module.TrainingStopped` with the signal's exit code
    (:func:`stop_exit_code`). A second SIGINT aborts at once (exit 130, no checkpoint): Ctrl-C twice
    is how a user says "now".

    The handlers only set a flag.  Saving from inside a handler (Lightning's SLURM auto-requeue
    does) can run collectives while other ranks are mid-step, and writes ``hpc_ckpt_*.ckpt`` where
    our resume does not look.  Lightning's own SIGTERM handler is replaced too: it ends the run at
    the next batch with a ``SystemExit`` of code 0 and no checkpoint, so a preempted job looked
    successful.  Ranks agree on the flag with a max all-reduce at each optimiser-step boundary, so
    all stop after the same step even if only some received the signal.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signum: int | None = None  # the first stop signal received
        self.stopped_at_step: int | None = None
        self._checked_step = -1
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()
        self._interrupts = 0  # SIGINTs so far: the second aborts, whatever signal came first

    @property
    def received(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a loader worker forked with our handlers: the training process decides, not it
        if signum == signal.SIGINT:
            self._interrupts += 1
        if self._interrupts >= 2:
            # The user pressed Ctrl-C twice: leave now.  os._exit skips Lightning's
            # KeyboardInterrupt path (it exits 1 after a teardown that can block on loader workers);
            # checkpoints are written atomically, so one cut off here leaves the previous one
            # intact.
            sys.stderr.write("physfm: second interrupt: aborting at once, no checkpoint saved\n")
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(stop_exit_code(signal.SIGINT))
        if signum == signal.SIGINT:
            sys.stderr.write(
                "physfm: interrupt received: saving a checkpoint after this step (Ctrl-C again aborts)\n"
            )
            sys.stderr.flush()
        if self.signum is None:
            self.signum = signum

    def _install(self) -> None:
        # Python allows handlers only there
        if threading.current_thread() is not threading.main_thread():
            return
        self._pid = os.getpid()
        for signum in self.signals:
            previous = signal.signal(signum, self._on_signal)
            self._previous.setdefault(signum, previous)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its own SIGTERM handler after the setup hooks (and restores ours at
        # its teardown): take the signals back before the first step.
        self._install()
        self._checked_step = trainer.global_step

    def restore(self) -> None:
        """Put back the handlers found at setup (idempotent).  The caller of ``fit`` calls it in a
        ``finally``: after an exception Lightning's teardown re-installs the handlers it found,
        ours."""
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.restore()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._checked_step:
            return  # mid gradient accumulation: a checkpoint here could not be resumed exactly
        self._checked_step = trainer.global_step
        # Which signal, not only whether: ranks that got different ones still agree on one exit
        # code.
        code = float(self.signals.index(self.signum) + 1) if self.signum is not None else 0.0
        flag = torch.tensor([code], device=pl_module.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            self.signum = self.signals[int(flag.item()) - 1]
            self.stopped_at_step = trainer.global_step
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(
                    f"physfm: signal {signal.Signals(self.signum).name} received: stopping after step "
                    f"{trainer.global_step} and saving a checkpoint",
                    flush=True,
                )


def keep_last_checkpoints(dirpath, every_n_steps: int, keep_last: int) -> L.Callback:
    """Save every ``every_n_steps`` optimiser steps (and at the last step), keep the newest
    ``keep_last``.

    Lightning's own top-k needs a monitored metric and then defers the last step's save to a
    validation run that may never come; here the step is the order, and pruning leaves only complete
    checkpoints.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    class KeepLast(ModelCheckpoint):
        def file_exists(self, filepath, trainer) -> bool:
            # A half-written file under this name (a crashed non-atomic copy; ours are atomic) is
            # replaced, not dodged with a "-v1" twin while the broken one stays beside it.
            local = trainer.is_global_zero and self._fs.exists(filepath) and is_complete(filepath)
            return trainer.strategy.reduce_boolean_decision(local, all=False)

        def _save_checkpoint(self, trainer, filepath: str) -> None:
            super()._save_checkpoint(trainer, filepath)
            if trainer.is_global_zero:
                prune_checkpoints(self.dirpath, keep_last)

        def on_train_end(self, trainer, pl_module) -> None:
            if trainer.global_step and not self._should_skip_saving_checkpoint(trainer):
                self._save_checkpoint(
                    trainer,
                    self._get_metric_interpolated_filepath_name(
                        self._monitor_candidates(trainer), trainer
                    ),
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


def keep_best_checkpoint(dirpath, monitor: str = "val/loss") -> L.Callback:
    """After each validation run, keep the one checkpoint with the lowest ``monitor`` in
    ``dirpath`` (a fine-tune exports it, not the last step's). Lightning's own top-1: it records the
    best score and path in every checkpoint, so a resumed run keeps comparing against it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(
        dirpath=dirpath,
        filename="step={step:07d}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode="min",
        save_top_k=1,
        save_last=False,
        save_on_train_epoch_end=False,
    )


def early_stopping(patience: int, monitor: str = "val/loss") -> L.Callback:
    """Stop after ``patience`` validation runs without a lower ``monitor`` (its count is saved in
    checkpoints, so a resumed run carries on counting)."""
    from lightning.pytorch.callbacks import EarlyStopping

    return EarlyStopping(
        monitor=monitor,
        mode="min",
        patience=patience,
        min_delta=0.0,
        check_on_train_epoch_end=False,
        verbose=False,
    )

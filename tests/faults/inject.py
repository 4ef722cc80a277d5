"""``python tests/faults/inject.py VERB ARGS...``: ``physfm VERB ARGS...`` with faults planted
first.

The faults come from environment variables so the same entry point serves single-process runs and
``torchrun`` workers (each rank reads them):

* ``FAULT_NAN_AT_STEP=S`` (and ``FAULT_NAN_RANK=R``, default every rank): the training loss becomes
  NaN at optimiser step S on rank R only — the guard must make every rank take the same decision;
* ``FAULT_STEP_SLEEP=S``: every training step prints ``inject: step N`` (N = optimiser steps done)
  and then sleeps S seconds, so a test can send a signal while a step is under way;
* ``FAULT_KILL_IN_SAVE=NAME``: while ``torch.save`` writes a checkpoint whose path contains NAME,
  write half of its bytes, flush them to disk, then SIGKILL this process — a crash in the middle of
  a save.
"""

from __future__ import annotations

import io
import os
import signal
import sys


def plant_nan(step: int, rank: int | None) -> None:
    from physfm.train.distributed import global_rank
    from physfm.train.module import ARModule

    original = ARModule.loss

    def loss(self, batch, *args, **kwargs):
        value = original(self, batch, *args, **kwargs)
        hit = self.training and self.global_step == step and (rank is None or global_rank() == rank)
        return value * float("nan") if hit else value

    ARModule.loss = loss


def plant_slow_steps(seconds: float) -> None:
    import time

    from physfm.train.module import ARModule

    original = ARModule.loss

    def loss(self, batch, *args, **kwargs):
        if self.training:
            print(f"inject: step {self.global_step}", flush=True)
            time.sleep(seconds)
        return original(self, batch, *args, **kwargs)

    ARModule.loss = loss


def plant_kill_in_save(name: str) -> None:
    import torch

    original = torch.save

    def save(obj, f, *args, **kwargs):
        target = str(getattr(f, "name", f))
        if name not in target:
            return original(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        original(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        half = data[: len(data) // 2]
        if hasattr(f, "write"):
            f.write(half)
            f.flush()
        else:
            with open(f, "wb") as fh:
                fh.write(half)
        print(f"inject: killing process {os.getpid()} halfway through writing {target}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def main() -> int:
    if "FAULT_NAN_AT_STEP" in os.environ:
        rank = os.environ.get("FAULT_NAN_RANK")
        plant_nan(int(os.environ["FAULT_NAN_AT_STEP"]), int(rank) if rank else None)
    if os.environ.get("FAULT_STEP_SLEEP"):
        plant_slow_steps(float(os.environ["FAULT_STEP_SLEEP"]))
    if os.environ.get("FAULT_KILL_IN_SAVE"):
        plant_kill_in_save(os.environ["FAULT_KILL_IN_SAVE"])
    from physfm.cli import main as physfm_main

    return physfm_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""Case 6: a NaN loss mid-run, on one rank of two → every rank takes the configured branch together
(no hang): ``stop`` exits 1 naming the step and writes no checkpoint after it; ``skip`` finishes and
counts it. (In-process single-rank versions, with weight checks: tests/test_pretrain.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from physfm.core.checkpoint import safe_torch_load
from tests.faults.conftest import pretrain_args, run_cli_distributed
from tests.harness import REPO_ROOT

COMMON = (
    "strategy.name=ddp",
    "trainer.max_steps=8",
    "trainer.checkpoint_every=2",
    "trainer.keep_last=10",
    "data.val_batches=0",
    "trainer.log_every=1",
)


def finite_checkpoints(out: Path) -> list[int]:
    steps = []
    for path in sorted((out / "checkpoints").glob("step=*.ckpt")):
        state = safe_torch_load(path)
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values()), (
            f"poisoned: {path}"
        )
        steps.append(state["global_step"])
    return steps


@pytest.mark.slow
@pytest.mark.distributed
def test_nan_on_one_rank_stops_every_rank_without_a_poisoned_checkpoint(
    tokens: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = run_cli_distributed(
        pretrain_args(tokens, out, *COMMON),
        inject=True,
        env={"FAULT_NAN_AT_STEP": "5", "FAULT_NAN_RANK": "1"},
    )
    assert not result.timed_out and result.returncode == 1, result.describe()
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("physfm pretrain: error")]
    assert errors and all("non-finite loss" in ln and "at step 5" in ln for ln in errors), (
        result.describe()
    )
    # No traceback from our code (the launcher prints its own report of the failed workers).
    assert (
        f'File "{REPO_ROOT / "physfm"}' not in result.stderr
        and "NonFiniteLoss:" not in result.stderr
    )
    assert finite_checkpoints(out) == [2, 4]  # nothing written at or after the poisoned step


@pytest.mark.slow
@pytest.mark.distributed
def test_nan_on_one_rank_is_skipped_by_every_rank(tokens: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli_distributed(
        pretrain_args(
            tokens,
            out,
            *COMMON,
            "trainer.nonfinite_loss=skip",
            "trainer.checkpoint_every=1",
            "trainer.keep_last=20",
        ),
        inject=True,
        env={"FAULT_NAN_AT_STEP": "3", "FAULT_NAN_RANK": "1"},
    )
    assert result.ok, result.describe()
    assert json.loads((out / "metrics.json").read_text())["train_skipped_batches"] == 1
    assert finite_checkpoints(out) == list(range(1, 9))
    before, after = (
        safe_torch_load(out / "checkpoints" / f"step={s:07d}.ckpt")["state_dict"] for s in (3, 4)
    )
    for name in before:  # the poisoned step changed no weight, on either rank's replica
        assert torch.equal(before[name], after[name]), name

"""Cases 1, 2 and 5: a job killed with SIGKILL resumes bit for bit; a crash in the middle of a
checkpoint save leaves the previous checkpoint whole and resumed; uneven shard counts over 2 ranks
never hang.

The 2-rank runs are real ``torch.distributed.run`` launches of ``physfm pretrain`` (DDP on gloo), on
token shards with 3 train shards of 22, 22 and 1 windows (conftest.py ``tokens``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from physfm.cli import main
from physfm.core.checkpoint import (
    consolidate_state_dict,
    find_latest_checkpoint,
    is_complete,
    safe_torch_load,
)
from physfm.inference.loading import load_model_state
from tests.faults.conftest import pretrain_args, run_cli, run_cli_distributed, run_distributed_until

MAX_STEPS = 16
DDP = (
    "strategy.name=ddp",
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.checkpoint_every=4",
    "trainer.keep_last=10",
    "data.val_batches=2",
)
HANG_BOUND_S = 120  # a finished tiny run takes ~15 s here; a hang would run to the harness timeout


def ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step={step:07d}.ckpt"


@pytest.fixture(scope="module")
def uninterrupted(tokens: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    return run_cli_distributed(pretrain_args(tokens, out, *DDP)), out


@pytest.mark.slow
@pytest.mark.distributed
def test_uneven_shards_over_two_ranks_finish_without_hanging(uninterrupted) -> None:
    result, out = uninterrupted
    assert result.ok and result.seconds < HANG_BOUND_S, result.describe()
    metrics = json.loads((out / "metrics.json").read_text())
    # training and validation both finished
    assert metrics["steps"] == MAX_STEPS and "val_loss" in metrics
    assert is_complete(ckpt(out, MAX_STEPS))


@pytest.mark.slow
@pytest.mark.distributed
def test_kill_9_mid_run_then_resume_matches_uninterrupted_bit_for_bit(
    uninterrupted, tokens: Path, tmp_path: Path
) -> None:
    reference, ref_out = uninterrupted
    assert reference.ok, reference.describe()
    out = tmp_path / "run"
    args = pretrain_args(tokens, out, *DDP)
    # Slowed steps (a sleep, nothing numeric) keep steps 9-16 from finishing before the poll sees
    # step 8's checkpoint and kills: on a loaded machine an unslowed run once got to step 16 first.
    killed, log = run_distributed_until(
        args, lambda: ckpt(out, 8).exists(), inject=True, env={"FAULT_STEP_SLEEP": "1"}
    )
    assert killed, f"the run ended before it could be killed:\n{log[-3000:]}"
    assert not ckpt(out, MAX_STEPS).exists() and not (out / "metrics.json").exists()
    newest = find_latest_checkpoint(out / "checkpoints")
    assert newest is not None and newest >= ckpt(out, 8)

    resumed = run_cli_distributed(args)
    assert resumed.ok, resumed.describe()
    assert f"resuming from {newest}" in resumed.stdout
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == str(newest)
    expected = consolidate_state_dict(ckpt(ref_out, MAX_STEPS), strip_prefix="model.")
    got, _ = load_model_state(out)  # a run directory resolves to its newest complete checkpoint
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.mark.slow
def test_crash_while_writing_a_checkpoint_resumes_from_the_previous_one(
    tokens: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    args = pretrain_args(
        tokens,
        out,
        "trainer.max_steps=12",
        "trainer.checkpoint_every=4",
        "trainer.keep_last=5",
        "data.val_batches=0",
        "trainer.logger=none",
    )
    crashed = run_cli(args, inject=True, env={"FAULT_KILL_IN_SAVE": "step=0000008"})
    assert crashed.returncode == -9 and "halfway through writing" in crashed.stdout, (
        crashed.describe()
    )
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    half = [n for n in names if n.startswith(".step=0000008.ckpt.") and n.endswith(".tmp")]
    # the half file is only a temp
    assert half and names == sorted(["step=0000004.ckpt", *half]), names
    assert not is_complete(out / "checkpoints" / half[0])
    # A half-written file under a final name (a non-atomic copy, another tool) is not taken for
    # whole either.
    whole = ckpt(out, 4).read_bytes()
    ckpt(out, 12).write_bytes(whole[: len(whole) // 2])
    assert find_latest_checkpoint(out / "checkpoints") == ckpt(out, 4)

    assert main(args) == 0
    assert f"resuming from {ckpt(out, 4)} (step 4)" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == str(ckpt(out, 4))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step=0000004.ckpt",
        "step=0000008.ckpt",
        "step=0000012.ckpt",
    ]  # leftovers pruned, step 12 rewritten
    final = safe_torch_load(ckpt(out, 12))
    assert final["global_step"] == 12
    assert all(torch.isfinite(t).all() for t in final["state_dict"].values())

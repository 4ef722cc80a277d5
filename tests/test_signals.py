"""A stopped run never looks successful: SIGTERM (preemption, a time limit, ``kill``) and SIGINT
(Ctrl-C) to ``physfm pretrain`` save a checkpoint after the current step, write metrics.json, say so
and exit 143 / 130 (SIGUSR1 keeps 75, tests/test_slurm.py); a second Ctrl-C aborts at once.

Each run is a real process (the signal reaches the CLI as it would from a shell or a scheduler),
slowed by tests/faults/inject.py so the signal lands in the middle of a step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from physfm.cli import main
from physfm.core.checkpoint import is_complete
from tests.faults.conftest import INJECT, pretrain_args
from tests.harness import REPO_ROOT, kill_tree, worker_env

MAX_STEPS = 12
TIMEOUT_S = 120


def args_for(tokens: Path, out: Path) -> list[str]:
    return pretrain_args(
        tokens, out, f"trainer.max_steps={MAX_STEPS}", "trainer.checkpoint_every=100"
    )


def run_signalled(
    args: list[str], signals: list[tuple[str, int]], step_sleep: float
) -> tuple[int, str, float]:
    """Run ``physfm ARGS`` with slow steps; each time the output shows a line containing ``text``,
    send ``signum``, in order.  Returns (exit code, output, seconds from the last signal to the
    exit)."""
    cmd = [sys.executable, str(INJECT), *args]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=worker_env({"FAULT_STEP_SLEEP": str(step_sleep)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    sent_at = time.monotonic()
    try:
        pending = list(signals)
        assert proc.stdout is not None
        for line in proc.stdout:  # a blocking read: the timeout below kills the process if it hangs
            lines.append(line)
            if pending and pending[0][0] in line:
                os.kill(proc.pid, pending.pop(0)[1])
                sent_at = time.monotonic()
            if time.monotonic() > deadline:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
    assert not pending, f"the run ended before every signal was sent:\n{''.join(lines)[-3000:]}"
    return proc.returncode, "".join(lines), time.monotonic() - sent_at


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["term", "int"]
)
def test_a_stop_signal_checkpoints_says_so_and_exits_non_zero(
    tokens: Path, tmp_path: Path, signum: int, code: int, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = args_for(tokens, out)
    rc, text, _ = run_signalled(args, [("inject: step 3", signum)], step_sleep=0.3)
    name = signal.Signals(signum).name
    assert rc == code, text[-3000:]
    # The step under way when the signal came finishes (it is step 4), and is saved.
    assert (
        f"physfm: signal {name} received: stopping after step 4 and saving a checkpoint" in text
    ), text[-3000:]
    assert f"physfm: stopped at step 4 on {name}; a checkpoint is in {out}/checkpoints" in text
    assert "Traceback" not in text
    assert is_complete(out / "checkpoints" / "step=0000004.ckpt")
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["steps"], metrics["stopped_at_step"], metrics["stopped_by"]) == (4, 4, name)

    if signum == signal.SIGTERM:  # the same command continues from there (in this process: faster)
        assert main(args) == 0
        assert (
            f"resuming from {out / 'checkpoints' / 'step=0000004.ckpt'} (step 4)"
            in capsys.readouterr().out
        )
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["steps"] == MAX_STEPS and metrics["stopped_at_step"] is None


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once(tokens: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first, second = ("inject: step 2", signal.SIGINT), ("Ctrl-C again aborts", signal.SIGINT)
    rc, text, seconds = run_signalled(args_for(tokens, out), [first, second], step_sleep=2.0)
    assert rc == 130, text[-3000:]
    assert "physfm: second interrupt: aborting at once, no checkpoint saved" in text, text[-3000:]
    assert seconds < 1.5, f"{seconds:.1f} s from the second Ctrl-C to the exit (a step sleeps 2 s)"
    assert "stopping after step" not in text and not (out / "metrics.json").exists()
    assert not list(out.glob("checkpoints/*.ckpt"))


def test_a_run_stopped_inside_any_verb_exits_with_its_code(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Verbs that train in-process (quickstart, finetune) end with the stop's code and one line,
    never a traceback or 0."""
    from physfm.train.module import TrainingStopped

    def stopped(args) -> int:
        raise TrainingStopped(tmp_path, 7, signal.SIGTERM)

    monkeypatch.setattr("physfm.cli.quickstart.run", stopped)
    assert main(["quickstart", "--out", str(tmp_path)]) == 143
    err = capsys.readouterr().err
    assert (
        f"physfm quickstart: stopped at step 7 on SIGTERM; a checkpoint is in {tmp_path}/checkpoints"
        in err
    )


def test_the_first_stop_signal_decides_and_a_second_ctrl_c_aborts_whatever_came_first(
    monkeypatch, capsys
) -> None:
    from physfm.train.callbacks import StopOnSignal

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr("physfm.train.callbacks.os._exit", exit_now)
    stop = StopOnSignal()
    stop._on_signal(signal.SIGTERM, None)
    stop._on_signal(signal.SIGINT, None)  # one Ctrl-C after a SIGTERM: still the SIGTERM's stop
    assert stop.signal_name == "SIGTERM"
    assert "Ctrl-C again aborts" in capsys.readouterr().err
    with pytest.raises(SystemExit) as aborted:
        stop._on_signal(signal.SIGINT, None)
    assert aborted.value.code == 130
    assert "second interrupt: aborting at once" in capsys.readouterr().err

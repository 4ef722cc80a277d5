"""physfm.train.op_builds: which DeepSpeed ops a config loads, the flock around their builds, and
the removal of a build lock that no process holds (a real 2-rank run past such a lock is in
tests/test_strategies.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from physfm.train.op_builds import (
    CPU_ADAM,
    FLOCK_NAME,
    SHM_COMM,
    op_build_lock,
    ops_for_config,
    processes_holding,
    remove_dead_build_lock,
)


def hold(script: str, ready: Path) -> subprocess.Popen:
    """A child process running ``script`` (which touches ``ready`` once it holds what it holds)."""
    child = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.05)
    return child


@pytest.mark.parametrize(
    ("config", "on_cpu", "ops"),
    [
        ({"zero_optimization": {"stage": 2}}, True, [SHM_COMM]),
        (
            {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}},
            True,
            [SHM_COMM, CPU_ADAM],
        ),
        (
            {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}},
            False,
            [CPU_ADAM],
        ),
        ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "none"}}}, False, []),
        ({}, False, []),
    ],
)
def test_ops_for_config(config: dict, on_cpu: bool, ops: list[str]) -> None:
    assert ops_for_config(config, on_cpu) == ops


def test_a_lock_no_process_holds_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    baton = tmp_path / "lock"
    baton.touch()
    assert processes_holding(baton) == []
    assert remove_dead_build_lock(tmp_path) == baton
    assert not baton.exists()
    assert f"removed {baton}" in caplog.text
    assert remove_dead_build_lock(tmp_path) is None  # nothing to do


def test_a_lock_a_live_build_holds_is_kept(tmp_path: Path) -> None:
    baton, ready = tmp_path / "lock", tmp_path / "ready"
    # what torch's FileBaton does: create with O_EXCL and keep the descriptor open while building
    child = hold(
        f"import os, pathlib, time; fd = os.open({str(baton)!r}, os.O_CREAT | os.O_EXCL); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)",
        ready,
    )
    try:
        assert processes_holding(baton) == [child.pid]
        assert remove_dead_build_lock(tmp_path) is None
        assert baton.exists()
    finally:
        child.kill()
        child.wait()
    # the builder was killed: its lock is now a dead build's
    assert remove_dead_build_lock(tmp_path) == baton


def test_the_build_flock_waits_for_its_holder_and_is_freed_when_it_dies(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = hold(
        f"import fcntl, pathlib, time; f = open({str(tmp_path / FLOCK_NAME)!r}, 'a+b'); "
        f"fcntl.flock(f, fcntl.LOCK_EX); pathlib.Path({str(ready)!r}).touch(); time.sleep(60)",
        ready,
    )
    try:
        with (
            pytest.raises(TimeoutError, match=str(tmp_path / FLOCK_NAME)),
            op_build_lock(tmp_path, 1.0),
        ):
            pass
    finally:
        child.kill()  # kill -9: no unlock, the kernel releases it
        child.wait()
    start = time.monotonic()
    with op_build_lock(tmp_path, 5.0):
        assert time.monotonic() - start < 2.0

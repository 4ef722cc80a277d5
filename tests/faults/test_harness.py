"""The test launchers themselves (faults/conftest.run_cli, harness.run_distributed): a timeout is
reported as one, and Ctrl-C in pytest is not dressed up as a timeout (it stops the test run and
leaves no process behind)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.faults import conftest
from tests.harness import run_distributed


@pytest.mark.slow
def test_a_timeout_is_reported_as_one() -> None:
    result = conftest.run_cli(["--help"], timeout=0.001)
    assert result.timed_out and not result.ok


LAUNCHERS = {
    "run_cli": lambda: conftest.run_cli(["--help"]),
    "run_distributed": lambda: run_distributed(["-m", "physfm.cli", "--help"], nproc=1),
}


@pytest.mark.slow
@pytest.mark.parametrize("launch", sorted(LAUNCHERS))
def test_ctrl_c_in_pytest_is_raised_not_reported_as_a_timeout(monkeypatch, launch: str) -> None:
    started: list[subprocess.Popen] = []
    original = subprocess.Popen.communicate

    def communicate(self, *args, **kwargs):
        if not started:
            started.append(self)
            raise KeyboardInterrupt  # what Ctrl-C does to the waiting pytest process
        return original(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "communicate", communicate)
    with pytest.raises(KeyboardInterrupt):
        LAUNCHERS[launch]()
    (proc,) = started
    assert proc.poll() is not None  # the child was killed and reaped
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)

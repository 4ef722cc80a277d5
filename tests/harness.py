"""Launch real multi-process (gloo) runs from pytest, as subprocesses.

The pytest process never joins a process group: workers are started by ``torch.distributed.run`` on
a free port, with ``OMP_NUM_THREADS=1`` (2 cores are shared), a hard timeout (the whole process
group is killed), and their output captured.  Tests should assert on what the workers *wrote*
(files, JSON), not only on the exit code.  There are no retries: a failure that passes on a second
try is still a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CompletedResult:
    """What one launch did: exit code, captured output, wall time, and whether it hit the
    timeout."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self, tail: int = 4000) -> str:
        """A failure message: the command, the exit status and the end of the output."""
        status = "timed out" if self.timed_out else f"exit code {self.returncode}"
        return (
            f"{' '.join(self.args)}\n{status} after {self.seconds:.1f}s\n"
            f"--- stdout (tail) ---\n{self.stdout[-tail:]}\n--- stderr (tail) ---\n{self.stderr[-tail:]}"
        )


def _free_port() -> int:
    from physfm.train.distributed import free_port

    return free_port()


def worker_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment workers get: ours, minus launcher variables that would confuse Lightning's
    cluster detection (a pytest inside an sbatch job must not look like an srun task), plus
    single-threaded math, offline wandb, and the repository on PYTHONPATH."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "PMI_", "OMPI_"))
        and k
        not in (
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
            "GROUP_RANK",
            "TORCHELASTIC_RUN_ID",
        )
    }
    base.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "WANDB_MODE": "offline",
            "PYTHONUNBUFFERED": "1",
            "PYTHONWARNINGS": "ignore",
            "DS_ACCELERATOR": "cpu",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
            ),
        }
    )
    base.update(env or {})
    return base


def run_distributed(
    script_or_module_args: Sequence[str],
    nproc: int = 2,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> CompletedResult:
    """Run ``python -m torch.distributed.run --nproc_per_node NPROC --master_port FREE ARGS...``.

    ``script_or_module_args`` is what follows the launcher: ``["path/to/script.py", "--flag", ...]``
    or ``["-m", "package.module", ...]``.  On timeout the launcher and every process under it are
    killed and ``timed_out`` is set.
    """
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        *map(str, script_or_module_args),
    ]
    start = time.monotonic()
    # Own session: a signal meant for pytest's terminal group does not half-kill the job; we kill it
    # whole.
    proc = subprocess.Popen(
        args,
        cwd=cwd or REPO_ROOT,
        env=worker_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    # a hang is a result: kill the job whole, keep what it printed
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        timed_out = True
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # something still holds the pipes: give up on the output
            stdout, stderr = "", "harness: output pipes still open 30 s after killing the workers"
    except BaseException:  # Ctrl-C or an error in pytest itself: leave no workers behind, re-raise
        kill_tree(proc.pid)
        proc.wait()
        raise
    return CompletedResult(
        args=args,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        seconds=time.monotonic() - start,
        timed_out=timed_out,
    )


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def kill_tree(pid: int) -> None:
    """SIGKILL the launcher we started and everything it started.  torchrun puts each worker in its
    own session, so killing the launcher's process group alone would orphan the workers."""
    # Freeze the tree first (a stopped process cannot spawn or restart workers), then collect it
    # (once the launcher dies its workers are re-parented and no longer findable), then kill it.
    family: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        if current in family:
            continue
        try:
            os.kill(current, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        family.append(current)
        frontier.extend(_children(current))
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)

"""Shared fixtures of the fault-injection suite: tiny token shards, a toy The Well dataset, CLI
launchers (single process and 2-rank torchrun, blocking or watched-and-killed) and a small disk."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.datagen import TINY_PRETRAIN as TINY
from tests.datagen import make_token_shards, make_toy_dataset
from tests.harness import REPO_ROOT, CompletedResult, kill_tree, run_distributed, worker_env

INJECT = Path(__file__).with_name("inject.py")
CLI_TIMEOUT = 150.0  # seconds; a hang is a failure, never a stuck CI job


def pretrain_args(tokens: Path, out: Path, *extra: str) -> list[str]:
    """``physfm pretrain`` arguments for the tiny model on ``tokens`` (quiet, CSV logs, fixed MFU
    peak)."""
    return [
        "pretrain",
        "--config",
        "configs/pretrain/tiny.yaml",
        *TINY,
        f"data.tokens=[{tokens}]",
        f"out={out}",
        "trainer.val_every=0",
        "trainer.peak_tflops=1",
        *extra,
    ]


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token shards with uneven shard counts and sizes: 3 train shards (22, 22, 1 windows) and 3
    valid shards (5, 5, 1) for 2 ranks."""
    return make_token_shards(tmp_path_factory.mktemp("faults") / "tokens", n_windows=45, n_shards=2)


@pytest.fixture()
def toy_dataset(tmp_path: Path) -> Path:
    """A small 2D The Well dataset (2 files per split, 2 trajectories of 8 steps, 8x8 grid)."""
    return make_toy_dataset(tmp_path / "toy", n_files=2, n_traj=2, n_steps=8, resolution=8)


def cli_entry(inject: bool) -> list[str]:
    """What follows ``python``: the fault-injecting entry or ``-m physfm.cli``."""
    return [str(INJECT)] if inject else ["-m", "physfm.cli"]


def run_cli(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    inject: bool = False,
    timeout: float = CLI_TIMEOUT,
) -> CompletedResult:
    """``python -m physfm.cli ARGS`` (or the fault-injecting entry) as one process, with a
    timeout."""
    entry = cli_entry(inject)
    cmd = [sys.executable, *entry, *map(str, args)]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=worker_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        stdout, stderr = proc.communicate()
        timed_out = True
    # Ctrl-C or another error in pytest itself: leave no process behind, re-raise
    except BaseException:
        kill_tree(proc.pid)
        proc.wait()
        raise
    return CompletedResult(
        cmd, proc.returncode, stdout, stderr, time.monotonic() - start, timed_out
    )


def run_cli_distributed(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    inject: bool = False,
    timeout: float = CLI_TIMEOUT,
) -> CompletedResult:
    """``physfm ARGS`` on 2 gloo ranks under ``torch.distributed.run`` (tests/harness.py)."""
    entry = cli_entry(inject)
    return run_distributed([*entry, *map(str, args)], nproc=2, timeout=timeout, env=env)


def run_distributed_until(
    args: Sequence[str],
    done: Callable[[], bool],
    *,
    env: dict[str, str] | None = None,
    inject: bool = False,
    timeout: float = CLI_TIMEOUT,
    poll: float = 0.02,
) -> tuple[bool, str]:
    """Start ``physfm ARGS`` (or the fault-injecting entry) on 2 ranks, wait until ``done()``
    holds, then SIGKILL the launcher and every worker at once (``kill -9`` of the whole job).
    Returns (killed while running, output so far)."""
    from physfm.train.distributed import free_port

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *cli_entry(inject),
        *map(str, args),
    ]
    log = (
        Path(os.environ.get("TMPDIR", "/tmp"))
        / f"faults-kill-{os.getpid()}-{time.monotonic_ns()}.log"
    )
    with log.open("w+") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=worker_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        killed = False
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if done():
                    kill_tree(proc.pid)
                    killed = True
                    break
                time.sleep(poll)
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
            proc.wait()
        out.seek(0)
        text = out.read()
    log.unlink(missing_ok=True)
    return killed, text


def digest(path: Path) -> str:
    """sha256 of a file, or of every file under a directory (names and bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- a small disk
@contextlib.contextmanager
def tmpfs(mountpoint: Path, size_kb: int) -> Iterator[Path]:
    """A real small filesystem (needs root): writes past ``size_kb`` fail with ENOSPC."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mountpoint)],
        check=True,
        capture_output=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)


def can_mount_tmpfs(tmp_path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    probe = tmp_path / ".probe"
    try:
        with tmpfs(probe, 64):
            pass
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
    return True


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """A size-limited file in this process (RLIMIT_FSIZE): writes past ``max_bytes`` in any file
    fail with EFBIG, as a full disk fails a write (SIGXFSZ ignored so the write returns an error
    instead)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


class SmallDisk:
    """A directory ``root`` whose free space a test can take away: ``with disk.full(free_kb):``
    makes writes under ``root`` fail once about ``free_kb`` more KiB are written.

    ``tmpfs`` mode: ``root`` is a real 32 MiB tmpfs (root only), filled up to ``free_kb`` left →
    ENOSPC. ``rlimit`` mode: ``root`` is an ordinary directory and ``full`` sets a per-file size
    limit → EFBIG."""

    def __init__(self, mode: str, root: Path):
        self.mode, self.root = mode, root

    @contextlib.contextmanager
    def full(self, free_kb: int) -> Iterator[None]:
        if self.mode == "rlimit":
            with file_size_limit(free_kb * 1024):
                yield
            return
        stat = os.statvfs(self.root)
        fill = stat.f_bavail * stat.f_frsize - free_kb * 1024
        filler = self.root / ".filler"
        with filler.open("wb") as fh:
            fh.write(b"\0" * max(0, fill))
        try:
            yield
        finally:
            filler.unlink()


@pytest.fixture(params=["tmpfs", "rlimit"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmallDisk]:
    if request.param == "rlimit":
        (tmp_path / "disk").mkdir()
        yield SmallDisk("rlimit", tmp_path / "disk")
        return
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("mounting a tmpfs needs root; the rlimit variant covers this case")
    with tmpfs(tmp_path / "disk", 32 * 1024) as root:
        yield SmallDisk("tmpfs", root)

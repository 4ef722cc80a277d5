"""DeepSpeed's compiled ops, built before DeepSpeed asks for them, past a lock left by a killed build.

DeepSpeed compiles its CPU ops on first use (shared-memory collectives for gloo, CPU Adam for
optimizer offload) with torch's extension loader, which guards each build directory with a bare
``lock`` file (``torch.utils.file_baton``): created with ``O_EXCL``, held open while the build runs,
deleted when it ends. A build killed part-way (a SLURM time limit, a preemption, a test timeout,
``kill -9``) never deletes it, and every later run on that cache then waits on it forever, printing
nothing.

:func:`build_deepspeed_ops` loads the ops a strategy will need while holding an ``flock`` on the
extension root, so the processes of one launch build each op once, one at a time, and a killed
holder's lock is released by the kernel. Under that lock, a ``lock`` file that no process on this
host has open is left over from a dead build, and is removed (with a warning naming it) before the
build. What this cannot see is a build running on another node into a cache shared over a network
file system by a program that does not take this ``flock``; the ``flock`` itself covers every
physfm process on every node where the file system supports it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_pipelines.atomic import exclusive_flock

log = logging.getLogger(__name__)

# The flock beside torch's build directories; one for all ops (the builds are short and rare).
FLOCK_NAME = ".physfm-op-build.flock"
# DeepSpeed builder class names (``get_accelerator().create_op_builder``).
SHM_COMM = "ShareMemCommBuilder"
CPU_ADAM = "CPUAdamBuilder"


def ops_for_config(ds_config: dict[str, Any], on_cpu: bool) -> list[str]:
    """The compiled ops a DeepSpeed run with ``ds_config`` loads: the shared-memory collectives on
    a CPU accelerator, CPU Adam when optimizer state is offloaded to the CPU."""
    ops = [SHM_COMM] if on_cpu else []
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    if offload.get("device") == "cpu":
        ops.append(CPU_ADAM)
    return ops


def build_dir(op_name: str) -> Path:
    """Where torch's extension loader builds ``op_name`` (``TORCH_EXTENSIONS_DIR`` or its default
    per-Python, per-accelerator folder).  torch's own private function, because the path must be
    exactly the one its loader will lock."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(op_name, verbose=False))


def processes_holding(path: Path) -> list[int]:
    """PIDs of the processes on this host with ``path`` open (those whose ``/proc/PID/fd`` this
    user may read: a build lock in this user's cache is held by this user's processes)."""
    target = str(path.resolve())
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone, or another user's
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        holders.append(int(proc.name))
                        break
    return holders


def remove_dead_build_lock(directory: Path) -> Path | None:
    """Remove ``directory/lock`` when no process on this host holds it open; return it if removed.
    Call only while holding :func:`op_build_lock`: a physfm build in progress holds both."""
    baton = directory / "lock"
    if not baton.exists():
        return None
    holders = processes_holding(baton)
    if holders:
        log.warning("%s is held by a build in progress (pid %s); waiting for it", baton, holders)
        return None
    age_s = time.time() - baton.stat().st_mtime
    baton.unlink(missing_ok=True)
    log.warning(
        "removed %s: the lock of a build that died %.0f s ago (no process holds it); rebuilding",
        baton,
        age_s,
    )
    return baton


@contextlib.contextmanager
def op_build_lock(root: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``root/.physfm-op-build.flock``; the kernel drops it when the
    holder dies.  Raises ``TimeoutError`` naming the file after ``timeout_s``.  A file system
    without ``flock`` support (some network mounts) gets a warning and no lock."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / FLOCK_NAME
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_flock(path, timeout_s, poll_s=0.5))
        except TimeoutError:
            raise TimeoutError(
                f"another process has held {path} for over {timeout_s:.0f} s while building "
                f"DeepSpeed ops; if none is building, delete {path}"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning("%s: no flock on this file system (%s); building unlocked", path, exc)
        yield


def build_deepspeed_ops(builder_names: Sequence[str], timeout_s: float = 1800.0) -> list[str]:
    """Build (or load, when built) each DeepSpeed op in ``builder_names`` that this DeepSpeed
    install can use, one process at a time per host, past a dead build's lock.  Returns the names
    of the ops loaded.  Later loads in this process (DeepSpeed's own) reuse them."""
    if not builder_names:
        return []
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builders = []
    for name in builder_names:
        builder = get_accelerator().create_op_builder(name)
        # what DeepSpeed itself skips (e.g. no shared-memory comm for this accelerator)
        if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            builders.append(builder)
    if not builders:
        return []
    root = build_dir(builders[0].name).parent
    with op_build_lock(root, timeout_s):
        for builder in builders:
            remove_dead_build_lock(build_dir(builder.name))
            builder.load()
    return [builder.name for builder in builders]

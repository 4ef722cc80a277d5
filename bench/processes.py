"""Launch a multi-process ``physfm`` job the way a user does (torchrun) and read each rank's memory
from the OS while it runs: the process layer of bench/scale.py, kept apart from what that bench
measures."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from physfm.train.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
GiB = 2**30


# ----------------------------------------------------------------------------- memory, read from
# the OS
def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * 1024
    return out


def status(pid: int) -> dict[str, int]:
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) * 1024
    return fields


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        for kid in children.get(frontier.pop(), []):
            found.append(kid)
            frontier.append(kid)
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


class MemoryMonitor(threading.Thread):
    """Samples the resident memory of every rank under a launcher (ranks found by their ``RANK``)
    until stopped; ``peak`` holds each rank's kernel high-water mark (VmHWM), ``timeline`` the
    samples."""

    def __init__(self, launcher_pid: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.launcher_pid, self.every_s = launcher_pid, every_s
        self.peak: dict[int, int] = {}
        self.last_rss: dict[int, int] = {}
        self.timeline: list[tuple[float, dict[int, int]]] = []
        self.ranks: dict[int, int] = {}  # pid -> rank
        self._stop_event = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            sample = {}
            for pid in _descendants(self.launcher_pid):
                if pid not in self.ranks:
                    rank = _rank_of(pid)
                    if rank is None:
                        continue
                    self.ranks[pid] = rank
                proc_status = status(pid)
                if "VmHWM" in proc_status:
                    rank = self.ranks[pid]
                    self.peak[rank] = max(self.peak.get(rank, 0), proc_status["VmHWM"])
                    self.last_rss[rank] = proc_status["VmRSS"]
                    sample[rank] = proc_status["VmRSS"]
            if sample:
                self.timeline.append((round(time.monotonic() - self.start_time, 2), sample))
            self._stop_event.wait(self.every_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# ----------------------------------------------------------------------------- launching physfm
# pretrain
def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "OMPI_"))}
    env.update(
        OMP_NUM_THREADS="1",  # one core per rank: 2 ranks on 2 cores
        MKL_NUM_THREADS="1",
        WANDB_MODE="offline",
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS="ignore",
        DS_ACCELERATOR="cpu",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    )
    return env


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (stopped first, so none can spawn more)."""
    family = [pid, *_descendants(pid)]
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGSTOP)
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def launch_pretrain(
    run_dir: Path,
    config: Path,
    overrides: list[str],
    nproc: int = 2,
    timeout_s: float = 1800,
    kill_when: Callable[[], bool] | None = None,
) -> dict:
    """``torchrun --nproc-per-node NPROC -m physfm.cli pretrain --config CONFIG OVERRIDES`` with the
    ranks' memory sampled; with ``kill_when``, SIGKILL the whole job once it returns True (a
    checkpoint is there)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--nnodes",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "physfm.cli",
        "pretrain",
        "--config",
        str(config),
        f"out={run_dir}",
        *overrides,
    ]
    log_path = run_dir.parent / f"{run_dir.name}.log"
    start = time.monotonic()
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=worker_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        monitor = MemoryMonitor(proc.pid)
        monitor.start()
        killed = False
        try:
            while proc.poll() is None:
                if time.monotonic() - start > timeout_s:
                    kill_tree(proc.pid)
                    raise RuntimeError(
                        f"{run_dir.name}: no result after {timeout_s:.0f} s; see {log_path}"
                    )
                if kill_when is not None and kill_when():
                    time.sleep(1.0)  # into the next step
                    kill_tree(proc.pid)
                    killed = True
                    break
                time.sleep(0.2)
            proc.wait()
        finally:
            monitor.stop()
    seconds = time.monotonic() - start
    log_text = log_path.read_text()
    # (seconds, {rank: RSS bytes}) samples
    timeline = run_dir.parent / f"{run_dir.name}.memory.json"
    timeline.write_text(json.dumps({"peak": monitor.peak, "timeline": monitor.timeline}))
    if proc.returncode != 0 and not killed:
        tail = "\n".join(log_text.splitlines()[-30:])
        raise RuntimeError(
            f"{run_dir.name}: physfm pretrain exited with {proc.returncode}:\n{tail}"
        )
    return {
        "seconds": round(seconds, 1),
        "killed": killed,
        "peak_bytes": dict(sorted(monitor.peak.items())),
        "last_rss_bytes": dict(sorted(monitor.last_rss.items())),
        "timeline": monitor.timeline,
        "log": log_text,
    }

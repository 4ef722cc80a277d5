"""Atomic writes, the project's one implementation: readers never see half a file or half a
directory.

* a file is written to a temporary name beside its target, fsynced, ``os.replace``d into place, and
  the directory fsynced (:func:`atomic_path`, :func:`atomic_write_text`,
  :func:`atomic_write_bytes`);
* a directory is filled under a staging name beside its target and renamed into place; an existing
  target is moved aside first and removed only after (:func:`atomic_dir`, :func:`publish_dir`);
* a matplotlib figure is saved through the same (:func:`save_figure`; matplotlib imported lazily);
* the staging names carry the writer's host and process id (``.NAME.HOST-PID.XXXXXXXX.tmp``), so the
  next write to the same place removes what a killed writer left (:func:`remove_stale_staging`), and
  never the staging of a writer still running;
* one writer at a time holds an exclusive ``flock`` that the kernel drops when it dies
  (:func:`exclusive_flock`).

One permission policy: files get ``0o666 & ~umask`` and directories ``0o777 & ~umask``, as any file
the user writes would (``mkstemp``/``mkdtemp`` alone give 0600/0700), so run directories, metrics
and shard sets on shared cluster storage stay readable by colleagues.  A write that runs out of room
raises an error that :func:`is_disk_full` recognises and whose message names the target and says the
previous version is intact.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# A write that failed for lack of room: a full disk, a quota, or a file-size limit (RLIMIT_FSIZE).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """A write to ``filename`` that ran out of room (``errno``/``strerror`` are the original's); its
    message names the target and says the previous version is intact.  Built like any OSError, so it
    pickles."""

    def __str__(self) -> str:
        return f"{self.filename}: not written, {self.strerror} (disk full or over quota); {PREVIOUS_INTACT}"


PREVIOUS_INTACT = "the previous version, if any, is intact"


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def disk_full_error(
    target: str | Path, err: OSError, error: type[Exception] = DiskFullError
) -> Exception:
    """The one error for a write to ``target`` that ran out of room, as an ``error`` (DiskFullError
    keeps the errno, so :func:`is_disk_full` still recognises it)."""
    full = DiskFullError(err.errno, err.strerror, str(target))
    return full if error is DiskFullError else error(str(full))


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it; restored at once
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a plain ``mkdir`` would give: ``0o777`` less the umask."""
    return 0o777 & ~_umask()


# ----------------------------------------------------------------------------------------------
# staging names
def staging_prefix(final: str | Path) -> str:
    """``.NAME.HOST-PID.``: hidden (globs such as ``*.tar`` never pick it up) and traceable to its
    writer."""
    return f".{Path(final).name}.{socket.gethostname()}-{os.getpid()}."


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^/]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_staging(final: str | Path) -> list[Path]:
    """Remove the staging files and directories of killed writes to ``final`` (same name, this host,
    a process that no longer runs); returns what was removed.  A writer on another host (shared
    storage) or still running keeps its staging: only a crash leaves one behind, and only its own
    host can tell."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    host, removed = socket.gethostname(), []
    for path in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        match = _STAGING.match(path.name)
        if not match or match["name"] != final.name or match["host"] != host:
            continue
        pid = int(match["pid"])
        # a write under way (this process cleans up its own)
        if pid == os.getpid() or _process_alive(pid):
            continue
        with contextlib.suppress(OSError):  # another writer's cleanup got there first
            remove_path(path)
            removed.append(path)
    return removed


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, disk_full: type[Exception] = DiskFullError) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (mode ``0o666 & ~umask``) for the caller to write; on
    success it is fsynced and replaces ``path``, on error it is removed and ``path`` is untouched.
    Running out of room raises ``disk_full`` (see :func:`disk_full_error`).  The temporary name is
    ``.NAME.*.tmp``, so globs such as ``*.hdf5`` or ``*.ckpt`` never pick it up."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    fd, name = tempfile.mkstemp(prefix=staging_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, file_mode())
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(err):
            raise disk_full_error(path, err, disk_full) from None  # type: ignore[arg-type]
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ----------------------------------------------------------------------------------------------
# directories
def remove_path(path: str | Path) -> None:
    """Remove a file or directory tree; a missing path is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=False)
    else:
        path.unlink(missing_ok=True)


def make_staging_dir(final: str | Path) -> Path:
    """An empty hidden directory ``.NAME.HOST-PID.*.tmp`` beside ``final`` (same filesystem, so the
    final rename is atomic), with the mode a plain ``mkdir`` would give; killed writes' staging is
    removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(final), suffix=".tmp", dir=final.parent))
    staging.chmod(dir_mode())
    return staging


def publish_dir(staging: str | Path, final: str | Path) -> None:
    """Move a fully written directory into place with a rename (atomic on one filesystem).  An
    existing ``final`` is moved aside (``NAME.old``) first and removed only after the new one is in
    place."""
    staging, final = Path(staging), Path(final)
    old = final.with_name(final.name + ".old")
    remove_path(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    fsync_dir(final.parent)
    remove_path(old)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``final``; on success it is renamed to ``final``
    (replacing what was there), on error it is removed and ``final`` is untouched."""
    staging = make_staging_dir(final)
    try:
        yield staging
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------
# locks
@contextlib.contextmanager
def exclusive_flock(path: str | Path, wait_s: float, poll_s: float = 0.2) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` body; the
    kernel releases it when the holder dies, so a killed holder never leaves it taken.  Raises
    ``TimeoutError`` naming ``path`` when another process holds it for over ``wait_s``, and the
    ``OSError`` of a file system without ``flock`` (``ENOLCK``, ``EOPNOTSUPP``)."""
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path}: held by another process for over {wait_s:.0f} s"
                    ) from None
                time.sleep(poll_s)
        yield


# ----------------------------------------------------------------------------------------------
# figures
def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed); matplotlib is imported on first
    use so that nothing else here pays for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 80) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a PNG), in the format of the
    path's suffix, then close the figure; returns ``path``."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        pyplot().close(fig)
    return path

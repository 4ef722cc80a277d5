"""A small progress display (rich) that degrades to periodic plain lines when output is not a
terminal (CI logs, Slurm output files), so logs stay readable."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress("sharding", unit="files") as p: p.update(done, total)``."""

    def __init__(self, description: str, unit: str = "steps", every_s: float = 5.0):
        self.description, self.unit, self.every_s = description, unit, every_s
        self._rich = None
        self._task = None
        self._last_print = 0.0
        self._start = time.perf_counter()

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                "[bold]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=True,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=None)
        return self

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        if self._rich is not None:
            self._rich.update(
                self._task, completed=done, total=total, description=f"{self.description} {note}"
            )
            return
        now = time.perf_counter()
        if now - self._last_print >= self.every_s or (total is not None and done >= total):
            self._last_print = now
            of = f"/{total}" if total is not None else ""
            print(
                f"{self.description}: {done}{of} {self.unit} ({now - self._start:.0f}s) {note}".rstrip(),
                file=sys.stderr,
                flush=True,
            )

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()

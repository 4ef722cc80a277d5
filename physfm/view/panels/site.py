"""What every panel's callbacks share: the runs folder they may read (:class:`Site`), the error
guard that keeps one bad run from breaking the page (:func:`guarded`), and the marker that names a
method's Dash inputs and outputs next to it (:func:`callback`)."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dash import Dash

from data_pipelines.errors import PhysfmError
from physfm.view import figures
from physfm.view.compute import Workbench
from physfm.view.layout import error_card
from physfm.view.runs import Run, read_run

log = logging.getLogger("physfm.view")

SLOW_CALLBACK_S = 0.5
ERROR, FIGURE = object(), object()  # placeholders in a guarded callback's fallback


@dataclass
class Site:
    """The runs folder the page shows and the workbench that computes its panels."""

    root: Path
    bench: Workbench

    def run_at(self, rel: str | None) -> Run:
        """The run at ``rel`` under the root, read afresh (refused outside the root)."""
        if not rel:
            raise ValueError("no run picked")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_dir():
            raise ValueError(f"{rel}: not a run directory under {self.root}")
        run = read_run(path, self.root)
        if run.error:
            raise ValueError(f"{rel}: {run.error}")
        return run

    def inside(self, rel: str) -> Path:
        """``rel`` under the root (values come from the browser, which may send anything)."""
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.exists():
            raise ValueError(f"{rel}: not a file or folder under {self.root}")
        return path


def guarded(*fallback: Any):
    """Run a callback; on an exception, log it and return ``fallback`` with every ``ERROR`` slot
    replaced by an error card naming the problem, so one bad run leaves the rest of the page
    working."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            start = time.perf_counter()
            try:
                result = fn(*args)
                # where a slow page spends its time
                if time.perf_counter() - start > SLOW_CALLBACK_S:
                    log.info("%s: %.2f s", fn.__name__, time.perf_counter() - start)
                return result
            except Exception as err:  # shown to the user; the traceback goes to the log
                # bad input, not a bug: no traceback
                expected = isinstance(err, (PhysfmError, ValueError, OSError))
                log.warning("%s: %s", fn.__name__, err, exc_info=not expected)
                card = error_card(f"{type(err).__name__}: {err}")
                out = tuple(
                    card if v is ERROR else figures.empty(str(err)[:120]) if v is FIGURE else v
                    for v in fallback
                )
                return out if len(out) > 1 else out[0]

        return inner

    return wrap


def callback(*dependencies: Any, **options: Any):
    """Mark a panel method as a Dash callback on ``dependencies`` (Outputs, Inputs, States);
    :func:`register` hands it to the app bound to its panel, so the wiring reads next to the code it
    drives."""

    def mark(fn):
        fn.dash_callback = (dependencies, options)
        return fn

    return mark


def register(app: Dash, panel: object) -> None:
    """Every method of ``panel`` marked with :func:`callback`, registered on ``app``."""
    for name, member in inspect.getmembers(type(panel)):
        if hasattr(member, "dash_callback"):
            dependencies, options = member.dash_callback
            app.callback(*dependencies, **options)(getattr(panel, name))

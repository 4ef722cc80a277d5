"""When a run finished, recorded inside its ``metrics.json`` (``finished_at``: UTC, ISO 8601,
seconds).

A file's modification time is the time of the last copy, sync or checkout, not of the run; the
recorded time travels with the file.  Every writer of a run's metrics.json (pretrain, evaluate,
rollout, probe, steer, refine, fine-tune, tokenizer evaluation, quickstart) goes through
:func:`write_metrics`; ``physfm view`` dates runs by it and falls back to the modification time only
for runs written before it existed."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data_pipelines.atomic import atomic_write_text

FINISHED_AT = "finished_at"


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """Stamp ``metrics`` (in place: the caller's dict matches the file) with the time now, write it
    atomically."""
    metrics[FINISHED_AT] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(path, json.dumps(metrics, indent=1))


def recorded_finish(metrics: dict[str, Any]) -> datetime | None:
    """The recorded finishing time as an aware datetime, or None when absent or unreadable."""
    value = metrics.get(FINISHED_AT)
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)

"""Find the run directories under a root and say what each one is, from the files it holds.

A run is a directory with a ``metrics.json``, a ``run.json`` or a ``report.md``; its kind comes from
those files' keys (no registry to keep in sync with the verbs). Folders that only hold a run's
inputs or byproducts (data, shards, checkpoints, logs, …) are not searched. A directory whose files
cannot be read becomes a :class:`Run` with ``error`` set, so the page shows a card for it and
everything else still works.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from data_pipelines.run_record import recorded_finish
from physfm.core.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from physfm.core.run_info import RUN_INFO

METRICS, REPORT = "metrics.json", "report.md"
# Folders inside runs that hold inputs, weights or logs, never a run of their own.
NOT_RUNS = {
    "data",
    "shards",
    "tokens",
    "checkpoints",
    "checkpoint",
    "logs",
    "wandb",
    "activations",
    "lifted",
    "predictions",
    "scratch",
    "__pycache__",
}
MAX_DEPTH = 4  # quickstart/steer/probe is three levels down; deeper trees are data, not runs


@dataclass
class Run:
    path: Path  # absolute
    rel: str  # relative to the root, "/"-separated ("." for the root itself)
    # quickstart, pretrain, finetune, export, tokenizer, tokenizer-eval, evaluate, rollout, …
    kind: str
    # when it finished, "YYYY-MM-DD HH:MM" local time: metrics.json's finished_at, else file times
    date: str
    metrics: dict[str, Any] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)
    report: str = ""
    error: str = ""  # set when a file of the run could not be read

    @property
    def headline(self) -> list[tuple[str, str]]:
        return headline(self)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ValueError names the file when it is not one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path.name}: unreadable ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path.name}: expected a JSON object, got {type(value).__name__}")
    return value


def run_kind(path: Path, metrics: dict[str, Any], run_info: dict[str, Any]) -> str:
    """What produced the directory, from the keys its files hold."""
    if "stages" in metrics:
        return "quickstart"
    if run_info:
        return (
            "finetune" if "held_out" in metrics or (path / "model_before").is_dir() else "pretrain"
        )
    if (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file():
        return "export"
    if (path / "checkpoint" / "tokenizer.json").is_file():
        return "tokenizer"
    checks = [
        ("tokenizer-eval", "codebook_size"),
        ("steer", "alphas"),
        ("probe", "layers"),
        ("refine", "vrmse_next_step"),
        ("rollout", "predictions"),
        ("evaluate", "horizons"),
    ]
    return next((kind for kind, key in checks if key in metrics), "run")


def read_run(path: Path, root: Path) -> Run:
    rel = path.relative_to(root).as_posix() or "."
    run = Run(path=path, rel=rel, kind="run", date="")
    try:
        run.metrics = _read_json(path / METRICS) if (path / METRICS).is_file() else {}
        run.run_info = _read_json(path / RUN_INFO) if (path / RUN_INFO).is_file() else {}
        run.report = (
            (path / REPORT).read_text(errors="replace") if (path / REPORT).is_file() else ""
        )
    except (ValueError, OSError) as err:
        run.error = str(err)
    run.kind = run_kind(path, run.metrics, run.run_info)
    run.date = run_date(path, run.metrics)
    return run


def run_date(path: Path, metrics: dict[str, Any]) -> str:
    """When the run finished: the time its metrics.json records (a copy keeps it), else — a run
    written before physfm recorded it — the newest modification time of its files, marked "(file
    time)"."""
    recorded = recorded_finish(metrics)
    if recorded is not None:
        return recorded.astimezone().strftime("%Y-%m-%d %H:%M")
    files = [path / name for name in (METRICS, RUN_INFO, REPORT) if (path / name).is_file()]
    newest = max((f.stat().st_mtime for f in files), default=path.stat().st_mtime)
    return datetime.fromtimestamp(newest).strftime("%Y-%m-%d %H:%M") + " (file time)"


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in (METRICS, RUN_INFO, REPORT)) or (
        (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file()
    )


def discover_runs(root: str | Path) -> list[Run]:
    """Every run directory under ``root`` (the root included), in path order."""
    root = Path(root).resolve()
    runs = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(
            d for d in dirnames if d not in NOT_RUNS and not d.startswith(".") and depth < MAX_DEPTH
        )
        if is_run_dir(here) or (here / "checkpoint" / "tokenizer.json").is_file():
            runs.append(read_run(here, root))
    return runs


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def headline(run: Run) -> list[tuple[str, str]]:
    """The few numbers that say how a run went, by kind (label, value)."""
    m, out = run.metrics, []
    if run.kind == "quickstart":
        stages = m.get("stages", {})
        out.append(("total s", _fmt(m.get("total_seconds"))))
        ev = stages.get("evaluate", {})
        for key in ("ar_1", "persistence_1"):
            if key in ev:
                out.append((f"VRMSE {key.replace('_1', '')} t+1", _fmt(ev[key])))
        if "probe + steer" in stages:
            out.append(("probe R²", _fmt(stages["probe + steer"].get("probe_r2"))))
    elif run.kind == "evaluate":
        for method, by_h in (m.get("overall") or {}).items():
            if method in ("ar", "ar_refined", "diffusion", "persistence"):
                out.append((f"{method} t+1", _fmt(by_h.get("1"))))
    elif run.kind == "tokenizer-eval":
        o = m.get("overall", {})
        out += [("VRMSE max", _fmt(o.get("vrmse_max"))), ("code usage", _fmt(o.get("code_usage")))]
    elif run.kind == "probe":
        out += [
            ("target", _fmt(m.get("target"))),
            ("best", _fmt(m.get("best_layer"))),
            ("R²", _fmt(m.get("probe_r2"))),
        ]
    elif run.kind == "steer":
        out += [
            ("ρ probe", _fmt(m.get("spearman_probe"))),
            (f"ρ {m.get('physics_statistic')}", _fmt(m.get("spearman_physics"))),
        ]
    elif run.kind in ("pretrain", "finetune"):
        for key in ("val_loss", "loss_last", "steps"):
            if key in m:
                out.append((key, _fmt(m[key])))
        if not out:
            out.append(("datasets", ", ".join(run.run_info.get("dataset_names", []))))
    elif run.kind == "refine":
        out.append(("improves", _fmt(m.get("improves"))))
    return [(label, value) for label, value in out if value != "None"]


def resolve_recorded(recorded: str | Path, run_dir: Path, root: Path) -> Path | None:
    """A path a run recorded (absolute, or relative to wherever the command ran, e.g.
    "runs/quickstart/shards") → the existing path it names: as is, then from the run directory and
    each of its ancestors (the command ran in one of them), and only then from the viewer's own
    working directory, which may hold another tree's runs of the same name. What it finds is only
    ever loaded through the safe loaders, never served."""
    if not recorded:
        return None
    recorded = Path(recorded)
    if recorded.is_absolute():
        return recorded if recorded.exists() else None
    run_dir = run_dir.resolve()
    candidates = [run_dir / recorded] + [a / recorded for a in run_dir.parents]
    candidates.append(Path.cwd() / recorded)
    return next((c for c in candidates if c.exists()), None)


def safe_file(root: Path, rel: str) -> Path | None:
    """The regular file ``rel`` names under ``root``, or None when it is absolute, climbs out
    (``..``, a link leading outside) or does not exist."""
    if not rel or rel.startswith(("/", "\\")) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return None
    root = root.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def find_directions(root: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """(direction file, its metadata) for every ``physfm steer direction`` output under ``root``: a
    file FILE (any name: ``--out runs/nu.direction`` as well as ``nu.safetensors``) with FILE.json
    beside it whose ``format`` is ``physfm-direction``.  Only a JSON file with a file of its own
    name minus ".json" beside it is read, so metrics.json and the like cost nothing."""
    root = Path(root).resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(
            d for d in dirnames if d not in NOT_RUNS and not d.startswith(".") and depth < MAX_DEPTH
        )
        names = set(filenames)
        for name in sorted(filenames):
            if not name.endswith(".json") or name[: -len(".json")] not in names:
                continue
            weights = Path(dirpath) / name[: -len(".json")]
            try:
                meta = _read_json(Path(dirpath) / name)
            # a direction's (by its usual name) is still listed: picking it shows why
            except ValueError as err:
                meta = {
                    "format": "physfm-direction" if name.endswith(".safetensors.json") else "",
                    "error": str(err),
                }
            if meta.get("format") == "physfm-direction" and weights.is_file():
                found.append((weights, meta))
    return found

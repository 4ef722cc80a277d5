"""The quickstart: the whole pipeline on built-in data, on a CPU, with a report.

Each stage is a function ``stage(ctx) -> dict`` of metrics that reads and extends ``ctx.state``
(paths to the data, shards, checkpoints made by earlier stages).  Stages run in order; each one's
wall time, metrics and figures go into ``metrics.json`` and ``report.md`` in the run directory.
Capabilities add their stage to :data:`STAGES`.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipelines.atomic import atomic_write_text
from data_pipelines.bench import bench_loaders
from data_pipelines.manifest import Manifest
from data_pipelines.run_record import write_metrics
from data_pipelines.sharding import WindowSpec, shard_datasets
from data_pipelines.simulators import simulate_dataset
from data_pipelines.validate import validate_paths
from physfm.quickstart import STAGE_NAMES
from physfm.quickstart.evaluate import stage_evaluate, stage_refine
from physfm.quickstart.finetune import stage_finetune
from physfm.quickstart.steer import stage_probe_steer
from physfm.quickstart.train import stage_pretrain, stage_tokenizer

# The built-in systems the quickstart simulates: small, fast, and with moving dynamics.
QUICKSTART_SYSTEMS = {
    "gray_scott2d": dict(n_traj=6, n_steps=24),
    "navier_stokes2d": dict(n_traj=6, n_steps=24),
}


@dataclass
class Context:
    out: Path
    seed: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, path relative to out)
    notes: list[str] = field(default_factory=list)


def stage_simulate(ctx: Context) -> dict:
    datasets = {}
    for system, sizes in QUICKSTART_SYSTEMS.items():
        datasets[system] = str(
            simulate_dataset(system, ctx.out / "data" / system, seed=ctx.seed, **sizes)
        )
    ctx.state["datasets"] = datasets
    return {"systems": list(datasets)}


def stage_validate(ctx: Context) -> dict:
    problems = validate_paths(list(ctx.state["datasets"].values()))
    if problems:
        raise RuntimeError("built-in data failed validation:\n" + "\n".join(map(str, problems)))
    return {"problems": 0}


def stage_shard(ctx: Context) -> dict:
    out = ctx.out / "shards"
    shard_datasets(
        list(ctx.state["datasets"].values()), out, WindowSpec(4, 1, 1), overwrite=True, workers=2
    )
    ctx.state["shards"] = str(out)
    return {f"windows_{split}": info.n_samples for split, info in Manifest.load(out).splits.items()}


def stage_loader_bench(ctx: Context) -> dict:
    result = bench_loaders(ctx.state["shards"], batch_size=16, workers=2, seconds=4.0)
    return {k: result[k] for k in ("ours_samples_per_s", "the_well_samples_per_s", "ratio")}


STAGES: list[tuple[str, Callable[[Context], dict]]] = list(
    zip(
        STAGE_NAMES,
        (
            stage_simulate,
            stage_validate,
            stage_shard,
            stage_loader_bench,
            stage_tokenizer,
            stage_pretrain,
            stage_refine,
            stage_evaluate,
            stage_finetune,
            stage_probe_steer,
        ),
        strict=True,
    )
)


def run_quickstart(
    out: str | Path,
    seed: int = 0,
    stages: list[str] | None = None,
    on_stage: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Run the stages (all, or the named ones in order) and write ``metrics.json`` +
    ``report.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, seed=seed)
    chosen = [(n, f) for n, f in STAGES if stages is None or n in stages]
    results: dict[str, Any] = {
        "stages": {},
        "machine": f"{platform.platform()}, {platform.processor()}",
    }
    total_start = time.perf_counter()
    for i, (name, fn) in enumerate(chosen):
        if on_stage:
            on_stage(name, i, len(chosen))
        start = time.perf_counter()
        metrics = fn(ctx)
        results["stages"][name] = {"seconds": round(time.perf_counter() - start, 2), **metrics}
    results["total_seconds"] = round(time.perf_counter() - total_start, 2)
    write_metrics(out / "metrics.json", results)
    atomic_write_text(out / "report.md", render_report(results, ctx))
    return results


def view_command(out: str | Path, program: str = "physfm") -> str:
    """The command that opens a quickstart run in the viewer (``physfm view``)."""
    return f"{program} view {out}"


def render_report(results: dict, ctx: Context) -> str:
    lines = [
        "# physfm quickstart report",
        "",
        f"Total: {results['total_seconds']:.1f} s on {results['machine']}.",
        "",
        "| stage | seconds | figures |",
        "|---|---:|---|",
    ]
    for name, info in results["stages"].items():
        shown = ", ".join(f"{k}={v}" for k, v in info.items() if k != "seconds")
        lines.append(f"| {name} | {info['seconds']:.1f} | {shown} |")
    for caption, path in ctx.figures:
        lines += ["", f"## {caption}", "", f"![{caption}]({path})"]
    for note in ctx.notes:
        lines += ["", note]
    lines += [
        "",
        f"Look at this run in a browser: `{view_command(ctx.out)}` (then http://127.0.0.1:8765).",
    ]
    return "\n".join(lines) + "\n"

"""Pretrain once, fine-tune anywhere: does a model pretrained on many simulations, fine-tuned on a
held-out one with 2 training trajectories and a few minutes, beat models trained on that system from
scratch?

Held out (``--held-out``; one per role): burgers1d (1D), gray_scott3d (3D), shear_flow2d (2D fluid),
swift_hohenberg2d (2D pattern-forming). Each has relatives left in pretraining, so there is something
to transfer: Burgers' nonlinear advection lives on in the 2D Navier–Stokes, Euler and shallow-water
systems; the 3D Gray–Scott has its 2D form; the shear flow has Navier–Stokes and Euler; Swift–Hohenberg
has Gray–Scott and Cahn–Hilliard. burgers1d is also the quickstart's held-out system; kdv1d's
dispersion and navier_stokes3d (the corpus's slowest simulation) have no closer 2D relative.

Pretraining (cached in ``--workdir``, reused while its inputs are unchanged): every 2D corpus system
not held out (``--systems``), built by ``physfm corpus`` at ``--corpus-size``; one tokenizer codes one
dimensionality, so the 1D and 3D systems are reached by transfer only: the 1D one through
``physfm finetune``'s 1D→2D lifting, the 3D one through tokenizer inflation where the fine-tune
supports it (where it refuses, the system's row says why and its JSON entry holds ``error``). The
project's own entry points, for ``--pretrain-minutes`` in all: the corpus tokenizer
(configs/tokenizer/corpus_cpu.yaml) for a third of it, its token shards, and the corpus AR model
(configs/pretrain/corpus_cpu.yaml) for the rest, its step count set from a measured step time so the
cosine schedule ends on the budget (``trainer.max_time_s`` as the hard cap).

Per held-out system (data simulated at ``--held-out-size``, default each system's default size;
training split cut to 2 trajectories, one per parameter set in turn; its statistics recomputed from
those two; the training trajectories left over join the valid and test splits, half each, so
selection and scores see every parameter set's several trajectories, not the one each split holds:
on burgers1d the two 2-trajectory splits disagreed on whether fine-tuning helped):

* ``finetuned``: ``physfm finetune`` (``--finetune-config``: configs/finetune/recipe.yaml where it
  exists, else tiny.yaml; only budget, data and output keys are overridden) from the pretrained run:
  new tokenizer stem/head (its own steps), then the AR model for ``--finetune-minutes``;
* ``zeroshot``: the pretrained AR weights before that AR fine-tuning, on the adapted tokenizer;
* ``scratch``: the same architecture, tokenizer and budget from random init (``compare_scratch``);
* ``fno``: The Well's FNO (bench/fno_baseline.py), ``unet``: a U-Net (bench/unet_baseline.py), each
  trained from scratch for the fine-tune's measured wall-clock (tokenizer adaptation included);
* ``persistence`` (repeat the last frame) and ``ceiling`` (the true future's tokens decoded: no
  model on that tokenizer does better).

Scores: VRMSE (The Well's, physical units, mean over fields) of the 1st, 8th and 16th predicted frame
of greedy rollouts from 4 context frames, on up to ``--eval-windows`` test windows. Scaling row (unless
``--skip-scaling``): pretrain at the same budget on 2 and 5 of the pretraining systems (a seeded,
nested choice) and fine-tune each held-out system from each; with the main run as "all".

    python bench/transfer.py [--workdir DIR] [--pretrain-minutes 30] [--finetune-minutes 4]
        [--held-out A,B,..] [--fine-tune-on A,..] [--systems ..] [--corpus-size default]
        [--skip-scaling] [--seed 0]

Defaults take about 30 min of pretraining (x3 with the scaling row) plus ~4 x 3 x 4 min per held-out
system on 2 cores. Prints a table, then as its last line one JSON object: ``per_system`` {system:
{finetuned_h, zeroshot_h, scratch_h, fno_h, unet_h, persistence_h, ceiling_h for h = 1, 8, 16} or
{"error": ...} with the baselines that ran}, ``wins_scratch`` (fine-tuned below scratch at h=1 and 8),
``wins_fno_1``, ``wins_persistence_1``, ``wins_persistence_8`` (where persistence < 1.5),
``scaling`` {system: {"2"|"5"|"all": finetuned_1}}, ``scaling_falls``, seconds and sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

from bench.fno_baseline import fno_forecaster, train_fno
from bench.held_out_data import HELD_OUT_SPLITS, native_shards, training_subset
from bench.pipeline import QUIET_PRETRAIN, ar_step_seconds, log, train_on_budget, train_tok
from bench.unet_baseline import train_unet, unet_forecaster
from data_pipelines.atomic import atomic_write_text
from data_pipelines.corpus import SIZES, build_corpus, subset_view
from data_pipelines.errors import PhysfmError
from data_pipelines.manifest import Manifest
from data_pipelines.simulators import SIMULATORS
from data_pipelines.well_io import list_split_files

ROOT = Path(__file__).resolve().parents[1]
N_INPUT, HORIZONS = 4, (1, 8, 16)
N_TRAIN_TRAJ = 2
TOKENIZER_SHARE = 1 / 3  # of --pretrain-minutes; the AR model gets the rest
BUDGET_USED_WARN = 0.8  # a pretraining run that used less of its budget is flagged
SCALING_SIZES = (2, 5)  # pretraining systems of the scaling row, besides all of them
# 2D systems by role: a held-out system needs one, so every role is tested once.
FLUID_2D = ("navier_stokes2d", "shear_flow2d", "rayleigh_benard2d", "shallow_water2d", "euler2d")
PATTERN_2D = ("gray_scott2d", "cahn_hilliard2d", "swift_hohenberg2d")
DEFAULT_HELD_OUT = ("burgers1d", "gray_scott3d", "shear_flow2d", "swift_hohenberg2d")
METHODS = (  # (row label, JSON key prefix)
    ("fine-tuned", "finetuned"),
    ("zero-shot (pretrained)", "zeroshot"),
    ("ours from scratch", "scratch"),
    ("FNO (The Well) scratch", "fno"),
    ("U-Net scratch", "unet"),
    ("persistence", "persistence"),
    ("token ceiling", "ceiling"),
)
# metrics.json method → JSON prefix (physfm/train/finetune_eval.py)
FINETUNE_METHODS = {
    "finetuned": "finetuned",
    "pretrained": "zeroshot",
    "scratch": "scratch",
    "persistence": "persistence",
    "tokenizer_ceiling": "ceiling",
}


class BenchError(PhysfmError, ValueError):
    """A bad flag value; the message names the flag."""


# ----------------------------------------------------------------------------------------------
# pure helpers
def role(system: str) -> str | None:
    """'1d', '3d', 'fluid', 'pattern' or None (a 2D system of neither kind)."""
    dims = SIMULATORS[system].n_spatial_dims
    if dims != 2:
        return f"{dims}d"
    return "fluid" if system in FLUID_2D else "pattern" if system in PATTERN_2D else None


def split_systems(held_out: list[str], systems: list[str]) -> tuple[list[str], list[str]]:
    """(held-out systems, pretraining systems): each held-out system has a role (1D, 3D, 2D fluid, 2D
    pattern-forming), one per role; pretraining takes every other 2D system of ``systems`` (one
    tokenizer codes one dimensionality), in registry order."""
    for flag, names in (("--held-out", held_out), ("--systems", systems)):
        unknown = [n for n in names if n not in SIMULATORS]
        if unknown:
            raise BenchError(f"{flag}: unknown system(s) {', '.join(unknown)}")
    if not held_out:
        raise BenchError("--held-out: name at least one system")
    roles: dict[str, str] = {}
    for name in held_out:
        r = role(name)
        if r is None:
            raise BenchError(
                f"--held-out: {name} is neither 1D, 3D, a 2D fluid ({', '.join(FLUID_2D)}) nor "
                f"2D pattern-forming ({', '.join(PATTERN_2D)})"
            )
        if r in roles:
            raise BenchError(f"--held-out: {roles[r]} and {name} are both {r}; one per role")
        roles[r] = name
    pretrain = [
        n
        for n in SIMULATORS
        if n in systems and n not in held_out and SIMULATORS[n].n_spatial_dims == 2
    ]
    if len(pretrain) < 2:
        raise BenchError(
            f"--systems: {len(pretrain)} 2D system(s) left for pretraining after --held-out; need >= 2"
        )
    return [n for n in SIMULATORS if n in held_out], pretrain


def scaling_subsets(pretrain: list[str], seed: int) -> dict[str, list[str]]:
    """{"2": [...], "5": [...], "all": pretrain}: nested subsets (each holds the smaller ones), a
    seeded shuffle of the pretraining systems cut at each size; sizes >= the whole pool are
    dropped."""
    order = list(pretrain)
    random.Random(seed).shuffle(order)
    subsets = {
        str(n): sorted(order[:n], key=pretrain.index) for n in SCALING_SIZES if n < len(order)
    }
    return {**subsets, "all": list(pretrain)}


def round_scores(prefix: str, scores: dict[str, float]) -> dict[str, float | None]:
    """{"1": v, ...} → {prefix_1: v rounded, ...}; a horizon the data cannot reach is None."""
    return {
        f"{prefix}_{h}": None if scores.get(str(h)) is None else round(scores[str(h)], 4)
        for h in HORIZONS
    }


def headline(per_system: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """The verdicts of the issue's targets from the per-system entries (errored systems win
    nothing)."""

    def below(s: str, a: str, b: str, h: int) -> bool:
        e = per_system[s]
        return None not in (e.get(f"{a}_{h}"), e.get(f"{b}_{h}")) and e[f"{a}_{h}"] < e[f"{b}_{h}"]

    systems = [s for s in per_system if "error" not in per_system[s]]
    return {
        "wins_scratch": [
            s
            for s in systems
            if below(s, "finetuned", "scratch", 1) and below(s, "finetuned", "scratch", 8)
        ],
        "wins_fno_1": [s for s in systems if below(s, "finetuned", "fno", 1)],
        "wins_unet_1": [s for s in systems if below(s, "finetuned", "unet", 1)],
        "wins_persistence_1": [s for s in systems if below(s, "finetuned", "persistence", 1)],
        # at h=8 only where persistence < 1.5 (the rule: past it the dynamics decorrelated)
        "wins_persistence_8": [
            s
            for s in systems
            if per_system[s].get("persistence_8") is not None
            and per_system[s]["persistence_8"] < 1.5
            and below(s, "finetuned", "persistence", 8)
        ],
    }


def add_scaling_points(
    scaling: dict[str, dict[str, float | None]], points: dict[str, dict[str, float | None]]
) -> None:
    """Merge one pretraining run's points ({system: {tag: finetuned_1}}) into the scaling row."""
    for system, point in points.items():
        scaling.setdefault(system, {}).update(point)


def scaling_falls(scaling: dict[str, dict[str, float | None]]) -> list[str]:
    """Systems whose fine-tuned h=1 error falls strictly as pretraining systems grow (2 → 5 → all)."""
    falls = []
    for system, points in scaling.items():
        values = [points[k] for k in points]
        if (
            len(values) > 1
            and None not in values
            and all(a > b for a, b in zip(values, values[1:]))
        ):
            falls.append(system)
    return falls


def learning_lines(per_system: dict[str, dict[str, Any]]) -> str:
    """Per system: which weights the fine-tune kept and, for it and its scratch twin, the step of
    the lowest validation loss out of the steps run, flagged where training went on fitting the
    two training trajectories past it."""
    lines = [
        "\nlearning (validation loss lowest at step / last validation; * = fits its training data after it):"
    ]
    for system, entry in per_system.items():
        parts = [f"kept {entry.get('kept') or '?'}"]
        for method, s in (entry.get("learning") or {}).items():
            if s:
                flag = "*" if s["overfit"] else ""
                parts.append(f"{method} {s['best_step']}/{s['last_step']}{flag}")
        lines.append(f"  {system:<20}" + ", ".join(parts))
    return "\n".join(lines)


def format_table(per_system: dict[str, dict[str, Any]]) -> str:
    """Rows: methods; columns: systems x h=1/8/16; '–' where absent; an errored system's fine-tune
    rows say 'error' (the message follows the table)."""
    width = 7 * len(HORIZONS)
    cols = {s: max(width, len(s)) + 2 for s in per_system}
    lines = [
        f"{'method':<26}" + "".join(f"{s:>{cols[s]}}" for s in per_system),
        f"{'':<26}"
        + "".join(
            " " * (cols[s] - width) + "".join(f"{'h' + str(h):>7}" for h in HORIZONS)
            for s in per_system
        ),
    ]
    for label, key in METHODS:
        cells = []
        for s, e in per_system.items():
            if "error" in e and f"{key}_1" not in e:
                cells.append(f"{'error':>{cols[s]}}")
                continue
            vals = [e.get(f"{key}_{h}") for h in HORIZONS]
            cells.append(
                " " * (cols[s] - width)
                + "".join(f"{v:>7.3f}" if v is not None else f"{'–':>7}" for v in vals)
            )
        lines.append(f"{label:<26}" + "".join(cells))
    for s, e in per_system.items():
        if "error" in e:
            lines.append(f"{s}: fine-tune failed: {e['error']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# cache: a step's output directory holds bench-inputs.json once it finished with those inputs
def cached(out: Path, inputs: dict[str, Any], build: Callable[[Path], Any]) -> Any:
    """``build(out)``'s JSON-able result, reused from ``out/bench-inputs.json`` when it was made
    from the same ``inputs``; otherwise ``out`` is cleared and rebuilt."""
    record = out / "bench-inputs.json"
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
        except ValueError:  # an unreadable record means the step is redone
            saved = {}
        if saved.get("inputs") == inputs:
            log(f"  reused {out}")
            return saved["result"]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    result = build(out)
    atomic_write_text(record, json.dumps({"inputs": inputs, "result": result}, indent=1))
    return result


def file_text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


# ----------------------------------------------------------------------------------------------
# data
def build_data(
    work: Path, name: str, systems: list[str], size: str, seed: int, threads: int
) -> Path:
    """``physfm corpus`` of ``systems`` at ``size`` in ``work/name-size`` (it reuses finished
    systems itself) → the corpus directory."""
    out = work / f"{name}-{size}"
    build_corpus(out, systems=systems, size=size, seed=seed, workers=max(1, threads), log=log)
    return out


# ----------------------------------------------------------------------------------------------
# pretraining
def pretrain(corpus: Path, systems: list[str], seconds: float, seed: int, out: Path) -> dict:
    """The corpus tokenizer for TOKENIZER_SHARE of ``seconds``, the token shards, then the corpus AR
    model for the rest (its step count from a measured step time) on ``systems`` → {run,
    seconds, steps}."""
    from tokenizer.encode import encode_shards

    # a manifest-only view of the chosen systems beside the corpus's shards (its paths point there)
    view = corpus / f"shards-{out.name}"
    view.mkdir(exist_ok=True)
    subset_view(Manifest.load(corpus / "shards"), systems, "shards").write(view)
    start = time.perf_counter()
    tok = train_tok(view, out / "tokenizer", "corpus_cpu.yaml", seconds * TOKENIZER_SHARE, seed)
    tokens = encode_shards(tok, view, out / "tokens", splits=["train"])
    tok_s = time.perf_counter() - start
    ar_seconds = max(30.0, seconds - tok_s)
    overrides = [
        f"model.fsq_levels={list(Manifest.load(tokens).tokenizer.levels)}",
        f"data.tokens=[{tokens}]",
        f"tokenizer={tok}",
        f"out={out / 'ar'}",
        f"seed={seed}",
        "trainer.val_every=0",
        *QUIET_PRETRAIN,
    ]
    start = time.perf_counter()
    run, done = train_on_budget(
        "corpus_cpu.yaml",
        overrides,
        ar_seconds,
        lambda cfg: ar_step_seconds(cfg, cfg.model.max_frames),
    )
    return {
        "run": str(run),
        "tokenizer_s": round(tok_s, 1),
        "ar_s": round(time.perf_counter() - start, 1),
        "ar_steps": done,
    }


# ----------------------------------------------------------------------------------------------
# one held-out system
def finetune_steps(
    pretrained_run: Path, dataset_shards: Path, batch_size: int, seconds: float
) -> int:
    """Optimiser steps that fill ``seconds`` (90 %, the rest for Lightning and data) at the measured
    step time of the pretrained model on the held-out system's token grid (1D lifted to 2D)."""
    from physfm.core.run_info import RunInfo
    from physfm.train.config import PretrainConfig
    from physfm.train.finetune import Pretrained

    base = Pretrained.load(str(pretrained_run))
    model = RunInfo.from_dict(base.info, str(pretrained_run)).model
    compression = base.tokenizer_cfg.spatial_compression
    entry = next(iter(Manifest.load(dataset_shards).datasets.values()))
    grid = [max(1, n // compression) for n in entry.spatial_shape or ()]
    cfg = PretrainConfig(model=dataclasses.replace(model, grid_shape=grid + [1] * (2 - len(grid))))
    cfg.data.batch_size = batch_size
    # at least twice the recipe's frozen warm-up (10 steps), so the trunk trains at all
    return max(20, int(0.9 * seconds / ar_step_seconds(cfg, cfg.model.max_frames)))


def run_finetune_budget(
    init: Path, data: Path, out: Path, config: Path, seconds: float, steps: int, args, scratch: bool
) -> dict[str, Any]:
    """``physfm finetune`` of ``init`` on ``data`` for ``steps`` steps / ``seconds`` (hard cap),
    with the scratch twin when ``scratch`` → {"scores": {prefix: {"h": v}}, "seconds": ...}."""
    from physfm.train.finetune import load_finetune_config, run_finetune

    horizons = list(HORIZONS)
    cfg = load_finetune_config(
        str(config),
        [
            f"finetune.init={init}",
            f"finetune.data={data}",
            f"out={out}",
            f"trainer.max_steps={steps}",
            f"trainer.max_time_s={seconds}",
            f"trainer.checkpoint_every={steps}",
            f"finetune.compare_scratch={str(scratch).lower()}",
            f"finetune.eval_horizons={horizons}".replace(" ", ""),
            f"finetune.eval_max_windows={args.eval_windows}",
            f"seed={args.seed}",
        ],
    )
    run = run_finetune(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    scores = {
        FINETUNE_METHODS[m]: v for m, v in metrics["overall"].items() if m in FINETUNE_METHODS
    }
    return {
        "scores": scores,
        "seconds": metrics["seconds"],
        "steps": metrics["steps"],
        "kept": metrics.get("kept"),
        "learning": metrics.get("learning"),
    }


def score_forecasters(
    forecasters: dict[str, Callable], shards: Path, name: str, horizon: int, max_windows: int
) -> dict[str, dict[str, float]]:
    """{prefix: {"h": VRMSE}} of each ``forecast(ctx, horizon, name)`` and of persistence on the
    test windows (the fine-tune's scoring: physfm.eval windows, The Well's VRMSE, mean over
    fields)."""
    from physfm.eval.windows import evaluation_windows
    from tokenizer.metrics import vrmse

    n_dims = len(Manifest.load(shards).dataset(name).spatial_shape or ())
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for batch in evaluation_windows(
        shards, "test", horizon, batch_size=16, max_windows=max_windows, datasets=[name]
    ):
        preds = {k: f(batch.context, horizon, name) for k, f in forecasters.items()}
        preds["persistence"] = batch.context[:, -1:].expand_as(batch.truth)
        for k, pred in preds.items():
            sums[k] = sums.get(k, 0) + vrmse(pred, batch.truth, n_dims).mean(-1).sum(0)
        count += batch.context.shape[0]
    return {
        k: {str(h): float(s[h - 1] / count) for h in HORIZONS if h <= horizon}
        for k, s in sums.items()
    }


def baselines(shards: Path, dataset: Path, seconds: float, args) -> dict[str, Any]:
    """The FNO and the U-Net from scratch, ``seconds`` each, scored with persistence."""
    manifest = Manifest.load(shards)
    name = next(iter(manifest.datasets))
    n_channels = len(manifest.dataset(name).channel_names)
    models, steps = {}, {}
    for key, train, forecaster in (
        ("fno", train_fno, fno_forecaster),
        ("unet", train_unet, unet_forecaster),
    ):
        trained = train(shards, name, n_channels, seconds, args.seed, N_INPUT)
        steps[key] = trained[2]
        models[key] = forecaster({name: trained}, N_INPUT)
        log(
            f"    {key}: {trained[2]} steps in {seconds:.0f} s ({trained[3] / 1e6:.1f}M parameters)"
        )
    horizon = min(max(HORIZONS), max_horizon(dataset))
    return {
        "scores": score_forecasters(models, shards, name, horizon, args.eval_windows),
        "steps": steps,
    }


def max_horizon(dataset: Path) -> int:
    """The longest rollout the test trajectories allow after N_INPUT context frames."""
    from data_pipelines.well_io import WellReader

    with WellReader(list_split_files(dataset, "test")[0]) as r:
        return r.n_steps - N_INPUT


def held_out_data(system: str, source: Path, work: Path, seed: int) -> tuple[Path, Path]:
    """(the 2-trajectory dataset, its native shards), cached per system and source plan."""
    inputs = {"plan": file_text(source.parent.parent / "done" / f"{system}.json"), "seed": seed}
    inputs["n_train"] = N_TRAIN_TRAJ
    inputs["splits"] = HELD_OUT_SPLITS
    base = work / "held-out" / system
    data = cached(
        base / "data",
        inputs,
        lambda out: str(training_subset(source, out / "dataset", N_TRAIN_TRAJ)),
    )
    shards = cached(
        base / "shards", inputs, lambda out: str(native_shards(Path(data), out / "shards", N_INPUT))
    )
    return Path(data), Path(shards)


def finetune_entry(
    system: str, pre: dict, data: Path, shards: Path, config: Path, args, scratch: bool, out: Path
) -> dict[str, Any]:
    """Fine-tune (and its scratch twin) on one held-out system; the project's error (e.g. a
    dimensionality the fine-tune refuses) is recorded, not raised → {"scores", "seconds", ...} or
    {"error": message}."""
    from physfm.train.finetune import load_finetune_config

    seconds = args.finetune_minutes * 60
    batch = load_finetune_config(str(config)).data.batch_size
    try:
        steps = finetune_steps(Path(pre["run"]), shards, batch, seconds)
        result = run_finetune_budget(
            Path(pre["run"]), data, out / "finetune", config, seconds, steps, args, scratch
        )
    except PhysfmError as err:
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        log(f"    {system}: fine-tune failed: {message}")
        return {"error": message}
    log(f"    {system}: fine-tuned {result['steps']} steps; seconds {result['seconds']}")
    return result


def held_out_result(
    system: str, pre: dict, data: Path, shards: Path, config: Path, args, out: Path
) -> dict[str, Any]:
    """One held-out system's JSON entry: every method's VRMSE at HORIZONS (or the fine-tune's error
    and the baselines)."""
    ft = finetune_entry(system, pre, data, shards, config, args, True, out)
    entry: dict[str, Any] = {}
    if "error" in ft:
        entry["error"] = ft["error"]
        wall = args.finetune_minutes * 60
    else:
        for prefix, scores in ft["scores"].items():
            entry.update(round_scores(prefix, scores))
        wall = ft["seconds"].get("tokenizer_s", 0.0) + ft["seconds"].get("finetune_s", 0.0)
    base = baselines(shards, data, wall, args)
    for prefix in ("fno", "unet", "persistence"):
        if f"{prefix}_1" not in entry:  # the fine-tune's persistence when it ran (same windows)
            entry.update(round_scores(prefix, base["scores"][prefix]))
    entry["steps"] = {"finetune": ft.get("steps"), **base["steps"]}
    entry["kept"] = ft.get("kept")
    entry["learning"] = ft.get("learning")  # where validation bottomed out, fine-tune and scratch
    entry["seconds"] = {**ft.get("seconds", {}), "baselines_each": round(wall, 1)}
    return entry


def scaling_point(
    system: str, pre: dict, data: Path, shards: Path, config: Path, args, out: Path
) -> dict[str, Any]:
    """The fine-tuned error from one scaling pretraining run (no scratch twin, no baselines)."""
    ft = finetune_entry(system, pre, data, shards, config, args, False, out)
    if "error" in ft:
        return {"error": ft["error"]}
    return round_scores("finetuned", ft["scores"]["finetuned"])


def config_inputs(*paths: Path) -> dict[str, str]:
    """The text of the configs a step reads (a changed config invalidates its cache)."""
    return {
        str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p): file_text(p) for p in paths
    }


PRETRAIN_CONFIGS = tuple(
    ROOT / p
    for p in (
        "configs/tokenizer/corpus_cpu.yaml",
        "configs/tokenizer/tiny_conditional.yaml",
        "configs/tokenizer/tiny.yaml",
        "configs/pretrain/corpus_cpu.yaml",
        "configs/pretrain/tiny.yaml",
        "configs/model/tiny.yaml",
    )
)


# ----------------------------------------------------------------------------------------------
# main
def default_finetune_config() -> Path:
    recipe = ROOT / "configs/finetune/recipe.yaml"
    return recipe if recipe.is_file() else ROOT / "configs/finetune/tiny.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None, help="cache (default: a temporary directory)")
    p.add_argument(
        "--pretrain-minutes",
        type=float,
        default=30.0,
        help="per pretraining run, tokenizer included",
    )
    p.add_argument(
        "--finetune-minutes", type=float, default=4.0, help="AR fine-tune budget per system"
    )
    p.add_argument(
        "--held-out", default=",".join(DEFAULT_HELD_OUT), help="one 1D, 3D, 2D fluid, 2D pattern"
    )
    p.add_argument(
        "--systems", default="all", help="corpus systems pretraining may use (comma-separated)"
    )
    p.add_argument(
        "--corpus-size", default="default", help=f"pretraining corpus: {', '.join(SIZES)}"
    )
    p.add_argument(
        "--held-out-size", default="default", help="held-out data (needs >= 20 frames for h=16)"
    )
    p.add_argument(
        "--fine-tune-on",
        default=None,
        help="only these held-out systems are fine-tuned and scored (default: all of --held-out; "
        "pretraining still leaves out every --held-out system, so cached runs are reused)",
    )
    p.add_argument("--finetune-config", default=None, help="default: recipe.yaml, else tiny.yaml")
    p.add_argument("--eval-windows", type=int, default=32, help="test windows per system")
    p.add_argument("--skip-scaling", action="store_true", help="no 2- and 5-system pretraining")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    try:
        check_args(args)
    except BenchError as err:
        p.error(str(err))  # one line, exit code 2
    return args


def check_args(args: argparse.Namespace) -> None:
    for flag in ("pretrain_minutes", "finetune_minutes"):
        if not getattr(args, flag) > 0:
            raise BenchError(f"--{flag.replace('_', '-')}: must be > 0, got {getattr(args, flag)}")
    for flag in ("corpus_size", "held_out_size"):
        if getattr(args, flag) not in SIZES:
            raise BenchError(
                f"--{flag.replace('_', '-')}: choose one of {', '.join(SIZES)}, got {getattr(args, flag)!r}"
            )
    if args.eval_windows < 1 or args.threads < 0:
        raise BenchError("--eval-windows must be >= 1 and --threads >= 0")
    config = Path(args.finetune_config) if args.finetune_config else default_finetune_config()
    if not config.is_file():
        raise BenchError(f"--finetune-config: {config} not found")
    args.finetune_config = config.resolve()
    systems = (
        list(SIMULATORS) if args.systems == "all" else [s for s in args.systems.split(",") if s]
    )
    args.held_out, args.pretrain_systems = split_systems(
        [s for s in args.held_out.split(",") if s], systems
    )
    chosen = args.fine_tune_on.split(",") if args.fine_tune_on else args.held_out
    outside = [s for s in chosen if s not in args.held_out]
    if outside:
        raise BenchError(f"--fine-tune-on: {', '.join(outside)} not in --held-out")
    args.fine_tune_on = [s for s in args.held_out if s in chosen]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="physfm-bench-transfer-"))
    start = time.perf_counter()
    log(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; workdir {work}; seed {args.seed}\n"
        f"held out: {', '.join(f'{s} ({role(s)})' for s in args.held_out)}; pretraining on "
        f"{', '.join(args.pretrain_systems)}; fine-tune config {args.finetune_config}"
    )
    workers = args.threads or min(2, os.cpu_count() or 1)
    corpus = build_data(work, "corpus", args.pretrain_systems, args.corpus_size, args.seed, workers)
    held = build_data(work, "held-out", args.held_out, args.held_out_size, args.seed, workers)
    subsets = (
        {"all": args.pretrain_systems}
        if args.skip_scaling
        else scaling_subsets(args.pretrain_systems, args.seed)
    )
    common = {
        "corpus": file_text(corpus / "corpus.json"),
        "seconds": args.pretrain_minutes * 60,
        "seed": args.seed,
        "configs": config_inputs(*PRETRAIN_CONFIGS),
    }

    def pretrained(tag: str) -> dict:
        log(f"== pretraining on {len(subsets[tag])} systems ({tag}): {', '.join(subsets[tag])}")
        inputs = {**common, "systems": subsets[tag]}
        out = work / f"pretrain-{tag}"
        result = cached(
            out, inputs, lambda o: pretrain(corpus, subsets[tag], common["seconds"], args.seed, o)
        )
        return {**result, "inputs": inputs}

    pre = {"all": pretrained("all")}
    per_system, scaling = run_held_out(args, work, held, pre["all"], "all", held_out_result)
    for tag in (t for t in subsets if t != "all"):
        pre[tag] = pretrained(tag)
        _, points = run_held_out(args, work, held, pre[tag], tag, scaling_point)
        add_scaling_points(scaling, points)
    return report(args, per_system, scaling, pre, subsets, time.perf_counter() - start)


def run_held_out(args, work: Path, held: Path, pre: dict, tag: str, measure: Callable) -> tuple:
    """``measure`` on every held-out system from the pretrained run ``pre``, cached per system →
    (per_system entries, {system: finetuned_h})."""
    entries = {}
    for system in args.fine_tune_on:
        log(f"== {system}: fine-tune from pretrain-{tag}")
        data, shards = held_out_data(system, held / "systems" / system, work, args.seed)
        inputs = {
            "pretrain": pre["inputs"],
            "finetune_minutes": args.finetune_minutes,
            "finetune_config": file_text(args.finetune_config),
            "eval_windows": args.eval_windows,
            "seed": args.seed,
            "data_plan": file_text(held / "done" / f"{system}.json"),
            "splits": HELD_OUT_SPLITS,
        }
        out = work / "held-out" / system / f"from-{tag}"
        run = partial(measure, system, pre, data, shards, args.finetune_config, args)
        entries[system] = cached(out, inputs, run)
    points = {s: {k: e.get(k) for k in ("finetuned_1",)} for s, e in entries.items()}
    return entries, {s: {tag: p["finetuned_1"]} for s, p in points.items()}


def report(args, per_system, scaling, pre, subsets, seconds: float) -> dict[str, Any]:
    """Print the table and the JSON line; return the JSON."""
    order = [t for t in subsets]  # "2", "5", "all"
    scaling = {s: {t: points.get(t) for t in order} for s, points in scaling.items()}
    log(
        "\nVRMSE of the k-th predicted frame on the held-out systems' test windows (greedy; mean over"
        f" fields; 1.0 = the spatial mean); {N_TRAIN_TRAJ} training trajectories, fine-tune "
        f"{args.finetune_minutes:g} min, FNO and U-Net the fine-tune's wall-clock"
    )
    log(format_table(per_system))
    log(learning_lines(per_system))
    if len(order) > 1:
        log("\nscaling: fine-tuned VRMSE h=1 by pretraining systems (" + ", ".join(order) + ")")
        for system, points in scaling.items():
            log(
                f"  {system:<20}"
                + "".join(f"{v if v is not None else '–':>10}" for v in points.values())
            )
    budget = args.pretrain_minutes * 60
    used = {t: round((p["tokenizer_s"] + p["ar_s"]) / budget, 2) for t, p in pre.items()}
    for tag, p in pre.items():
        log(
            f"pretraining {tag}: {p['tokenizer_s']:.0f} s tokenizer + {p['ar_s']:.0f} s AR = "
            f"{p['ar_steps']} AR steps, {used[tag]:.0%} of the {budget:.0f} s budget"
        )
        if used[tag] < BUDGET_USED_WARN:
            # the AR step count comes from a step time measured before training; a busy machine
            # inflates it and the run stops early, so this point is not at the others' budget
            log(
                f"  warning: pretraining {tag} used {used[tag]:.0%} of its budget (its step time "
                f"was measured on a busy machine?); delete pretrain-{tag} and held-out/*/from-{tag} in "
                "the workdir and rerun to measure it again"
            )
    result: dict[str, Any] = {
        "per_system": per_system,
        **headline(per_system),
        "pretrain_budget_used": used,
        "scaling": scaling,
        "scaling_falls": scaling_falls(scaling) if len(order) > 1 else [],
        "held_out": {role(s): s for s in args.held_out},
        "pretrained_on": subsets,
        "pretrain": {t: {k: v for k, v in p.items() if k != "inputs"} for t, p in pre.items()},
        "finetune_config": str(args.finetune_config.relative_to(ROOT))
        if args.finetune_config.is_relative_to(ROOT)
        else str(args.finetune_config),
        "sizes": {
            "pretrain_minutes": args.pretrain_minutes,
            "finetune_minutes": args.finetune_minutes,
            "corpus_size": args.corpus_size,
            "held_out_size": args.held_out_size,
            "n_train_traj": N_TRAIN_TRAJ,
            "eval_windows": args.eval_windows,
        },
        "seconds": round(seconds, 1),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()

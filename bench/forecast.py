"""Forecasting on five systems at equal CPU wall-clock: our token model (raw and refined) vs
persistence, the tokenizer's own baselines and The Well's FNO, plus one ablation row per design
lever.

Systems (built-in simulators, their default parameter sets and trajectory lengths; ``--n-traj`` 6
trajectories per set, split 4/1/1 into train/valid/test; training windows of 4 + 1 frames every
``--stride`` 2 frames, as a few CPU minutes of training see only a fraction of them): gray_scott2d,
navier_stokes2d and wave2d at 64², navier_stokes2d at 32², burgers1d (128 points). They fall into
three *groups*, each with its own shards, tokenizer and AR model (a dataset name can appear only
once per model, so NS at 32² cannot join the 64² group):

* ``2d64``: the three 64² systems jointly (one tokenizer with per-dataset heads, one AR model with
  dataset tokens), as a small multi-physics model;
* ``ns32``: navier_stokes2d at 32²;
* ``burgers1d``: its own 1D tokenizer and AR model.

Our default pipeline per group (what the ``ours`` rows and ``model_*`` are): the tiny conditional
tokenizer (configs/tokenizer/tiny_conditional.yaml: key frame + frames coded given the previous
frame), trained for its time budget (the LR schedule follows the clock); the shards encoded; the
tiny AR model (configs/pretrain/tiny.yaml) with ``model.prediction=next_frame`` (every token of the
next frame at once, initialised at copy-tokens), the code's structure (``model.head=digits``:
per-digit FSQ embedding and one softmax per digit; ``model.greedy=mean``: rollouts decode each
digit's expected level) and patch jittering along each group's symmetries (``stability.shift``,
GROUP_SHIFT), its step count set from a measured step time so the cosine schedule ends on the
budget, ``trainer.max_time_s`` as the hard cap; the refiner trained on the AR model's own 4-step
rollouts (``data.rollout_steps=4`` on ``--refine-windows`` 32 training windows per dataset, each
pair told its rollout step: `collect_pairs`, then `fit_refiner` for the steps that fill the rest of
its budget at a measured step time; the pairs' rollouts are paid from the same budget), saved as
``AR_RUN/refiner`` where `PhysicsModel` finds it). ``model_*`` is the method a user gets by default,
`evaluate`'s ``default_method``: refined when the refiner lowered the one-step VRMSE on held-out
(valid) windows when it was fit and the mean VRMSE of an 8-frame held-out rollout, as `physfm
refine` decides, else raw.

The FNO (bench/fno_baseline.py) is The Well's (neuraloperator 2.0.0 ``FNO``: 16 modes per axis, 128
hidden channels, 4 Fourier layers, the 4 context frames stacked on channels in, the next frame out,
z-scored fields, MSE, AdamW; one model per system as in The Well). The Well's benchmark used lr 1e-4
over 12 GPU hours; on a few CPU minutes we use 1e-3 with a cosine schedule over the time budget.
Each group's FNOs together get the wall-clock our group took to train (tokenizer + encode + AR +
refiner, measured), split evenly over its systems.

Ablations: each flips one lever of the default pipeline and is trained at the same per-stage budgets
as that group's default model, scored by its default method: ``digits_head`` (per-digit FSQ heads
with expected-level decoding), ``pushforward`` / ``shift`` (rollout training on / flipped),
``code_noise`` (noise in code space added), ``raster`` (token-by-token AR) — each a new AR + refiner
on the same tokenizer; ``greedy_mean`` (the default model decoding the expected code instead of the
mode, no training); ``plain_tokens`` (configs/tokenizer/tiny.yaml; new tokenizer + AR + refiner),
``refiner_tf`` (refiner trained on teacher-forced one-step pairs, ``rollout_steps=1``, on 4x the
windows so the pair count matches; same AR); ``flow_matching`` (the continuous alternative: the
flow-matching transformer of configs/pretrain/diffusion_tiny.yaml on the same conditional
tokenizer's latents, trained on the group's field shards with the frozen tokenizer encoding them on
the fly; it has no refiner, so it trains for the AR model's and the refiner's budgets together, its
step count set from a measured step time as the AR model's; scored by evaluate's ``diffusion``
method at the config's ``sampling_steps``). ``--ablations ns32`` (default: the cheapest group),
``all`` or ``none``; ``--ablation-rows`` picks rows (raster and code_noise only on request).

Scoring: the test split, windows of 4 context + 16 true frames (`evaluation_windows` re-cuts them
from the source files), at most ``--eval-windows`` per dataset spread evenly, greedy decoding; VRMSE
(The Well's, in physical units, as physfm/eval computes it) of the 1st, 4th, 8th and 16th predicted
frame, mean over fields. Rollout frames/s: batch 1, one test window, ``--fps-frames`` frames after a
one-frame warm-up; the headline ``frames_per_s`` is the default model at 64² (the issue's target: >=
20 frames/s for the tiny model on 2 cores), ``frames_per_s_bf16`` the same with its transformer in
bfloat16 (``--dtype bfloat16``), whose scores are the "ours default, bf16" row (``model_bf16_*``).

Budget (``--minutes``, default 20, on 2 idle cores): ours gets 30 % of it over all groups (shares
65/20/15 % for 2d64/ns32/burgers1d; within a group 35 % tokenizer, 45 % AR, 20 % refiner), the FNOs
the same measured time, the ns32 ablations about 3.8x ns32's budget (274 s at 20 minutes), and data
(~25 s), encoding, evaluation and frames/s the rest: 1,739 s in all, measured on 2 idle cores with
the default rows (scoring the 64² systems over 16 frames, twice with bf16, is ~500 s of it; Lightning
start-up and checkpoints add ~10 s per AR run). Every stage total is a flag (``--tok-seconds``,
``--ar-seconds``, ``--refine-seconds``: summed over the groups; ``--fno-seconds`` overrides the equal-time rule); the
measured wall time of each stage is printed.

    python bench/forecast.py [--minutes 20] [--ablations ns32|all|none] [--ablation-rows ROWS] [--groups G]
                             [--eval-windows 16] [--threads 0] [--workdir DIR] [--seed 0] [--curve]

Prints a table and the optimizer steps per group, then as its last line one JSON object:
``per_system`` {system: {model_h, raw_h, persistence_h, fno_h, ceiling_h, copy_tokens_h for h = 1,
4, 8, 16, ...}}, ``wins_persistence_1``, ``wins_persistence_8`` (systems where model < persistence;
at h=8 only where persistence < 1), ``wins_persistence_16`` (only where persistence < 1.5),
``wins_fno_1``, ``raw_vs_copy_tokens_1``, ``n_systems``, ``frames_per_s``, and the ablations
(``ablations`` {system: {row: {ar_h, ar_refined_h for h = 1, 4, 8, 16, default_method}}}; the
``flow_matching`` row has ``diffusion_h`` instead), seconds and steps.

``--curve`` (about 30 minutes on 2 idle cores) instead trains the NS 32² group and a Gray–Scott-only
64² group at 0.5x, 1x and 3x the default budget (every stage and the FNO alike) and prints h=1 and
h=8 of ours raw, ours default and the FNO at each, with the optimizer steps; JSON ``curve``: {group:
{"0.5"|"1"|"3": {raw_1, raw_8, model_1, model_8, fno_1, fno_8, steps_ar, steps_fno}}}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

from bench.fno_baseline import fno_forecaster, train_fno
from bench.pipeline import (
    REFINE_ROLLOUT_STEPS,
    log,
    train_flow_matching,
    train_pipeline,
    train_refiner,
)
from data_pipelines.sharding import WindowSpec, shard_datasets
from data_pipelines.simulators import simulate_dataset
from physfm.eval.evaluate import score_windows, summarize
from physfm.eval.windows import evaluation_windows
from physfm.inference import PhysicsModel

N_INPUT, HORIZON, HORIZONS = 4, 16, (1, 4, 8, 16)
OURS_FRACTION = 0.30  # of --minutes, for our three groups together
STAGE_SPLIT = {"tokenizer": 0.35, "ar": 0.45, "refiner": 0.20}
# Patch jittering (stability.shift) per group, in token steps per spatial axis: the built-in
# Navier–Stokes forcing repeats every n/4 cells along its last axis (2 tokens at 32², 4 at 64²);
# Gray–Scott, the wave and Burgers (a random forcing, shift-invariant in law) allow any whole-token
# shift.
GROUP_SHIFT = {"2d64": [1, 4], "ns32": [1, 2], "burgers1d": [1], "gs64": [1, 1]}
DEFAULT_SHIFT = True  # the default pipeline jitters (the ablation row "shift" then turns it off)
# Ablations that train a new AR model (+ refiner) on the default tokenizer: (prediction, config
# overrides).
AR_ABLATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    # token-by-token AR, one softmax
    "raster": ("raster", ("model.head=vocab", "model.greedy=mode")),
    # lever 1 on: per-digit FSQ embedding and heads, expected-level decoding (opt-in: see
    # configs/model/tiny.yaml)
    "digits_head": ("next_frame", ("model.head=digits", "model.greedy=mean")),
    "pushforward": ("next_frame", ("stability.pushforward=0.5",)),  # lever 3 on: rollout training
    # lever 3: noise in code space as well
    "code_noise": ("next_frame", ("stability.code_noise=0.05",)),
    # lever 3: patch jittering flipped (off when the default jitters, else on)
    "shift": ("next_frame", ("stability.shift=[]" if DEFAULT_SHIFT else "stability.shift=GROUP",)),
}


def group_ar_overrides(group: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The default AR model's group-specific overrides, then ``extra`` (an ablation's; "GROUP" in a
    value is replaced by the group's shift steps)."""
    steps = str(GROUP_SHIFT[group]).replace(" ", "")
    default = (f"stability.shift={steps}",) if DEFAULT_SHIFT else ()
    return (*default, *(o.replace("GROUP", steps) for o in extra))


# Ablations that decode the default model another way (no training): the greedy rule.
DECODE_ABLATIONS = {"greedy_mean": "mean"}  # lever 1/4: the expected code instead of the mode
ABLATIONS = (
    "raster",
    "plain_tokens",
    "refiner_tf",
    *(k for k in AR_ABLATIONS if k != "raster"),
    *DECODE_ABLATIONS,
    "flow_matching",
)
# The rows a plain run trains (the levers this pipeline's defaults rest on, and the continuous
# alternative; raster and code noise lost before and are opt-in through --ablation-rows, to keep
# the run near its 20 minutes).
DEFAULT_ABLATION_ROWS = (
    "digits_head,pushforward,shift,greedy_mean,plain_tokens,refiner_tf,flow_matching"
)
# --curve: the budget multipliers and the horizons reported.
CURVE_MULTIPLIERS = (0.5, 1.0, 3.0)
CURVE_HORIZONS = (1, 8)


@dataclass(frozen=True)
class Group:
    """Systems sharing one tokenizer and one AR model: (system, resolution or None for the
    default)."""

    name: str
    systems: tuple[tuple[str, int | None], ...]
    share: float  # of our training budget


GROUPS = (
    Group("2d64", (("gray_scott2d", 64), ("navier_stokes2d", 64), ("wave2d", 64)), 0.65),
    Group("ns32", (("navier_stokes2d", 32),), 0.20),
    Group("burgers1d", (("burgers1d", None),), 0.15),
)
# --curve's groups: NS 32², and Gray–Scott alone at 64² with the 2d64 group's per-system budget.
CURVE_GROUPS = (
    Group("ns32", (("navier_stokes2d", 32),), 0.20),
    Group("gs64", (("gray_scott2d", 64),), 0.65 / 3),
)


def system_label(system: str, resolution: int | None) -> str:
    """'gray_scott2d@64'; 1D systems (one resolution here) by name alone."""
    return system if system.endswith("1d") or resolution is None else f"{system}@{resolution}"


# ----------------------------------------------------------------------------------------------
# pure helpers
def plan_budgets(
    minutes: float,
    tok_seconds: float | None = None,
    ar_seconds: float | None = None,
    refine_seconds: float | None = None,
    groups: tuple[Group, ...] = GROUPS,
) -> dict[str, dict[str, float]]:
    """{group: {tokenizer, ar, refiner}} seconds: each stage total (default: its share of
    OURS_FRACTION of ``minutes``) split over the groups by their shares."""
    ours = minutes * 60 * OURS_FRACTION
    totals = {
        "tokenizer": tok_seconds if tok_seconds is not None else ours * STAGE_SPLIT["tokenizer"],
        "ar": ar_seconds if ar_seconds is not None else ours * STAGE_SPLIT["ar"],
        "refiner": refine_seconds if refine_seconds is not None else ours * STAGE_SPLIT["refiner"],
    }
    return {g.name: {k: v * g.share for k, v in totals.items()} for g in groups}


def planned_training_seconds(
    budgets: dict[str, dict[str, float]],
    ablation_groups: list[str],
    rows: tuple[str, ...] = ABLATIONS,
) -> float:
    """Training wall-clock the plan spends: ours + the FNOs (equal) + the ablations (a new AR model
    or the flow-matching model: AR + refiner, plain tokens: all three stages, teacher-forced
    refiner: refiner, a decoding rule: nothing)."""
    ours = sum(sum(b.values()) for b in budgets.values())

    def cost(b: dict[str, float], row: str) -> float:
        if row == "plain_tokens":
            return sum(b.values())
        if row == "refiner_tf":
            return b["refiner"]
        return b["ar"] + b["refiner"] if row in (*AR_ABLATIONS, "flow_matching") else 0.0

    return 2 * ours + sum(cost(budgets[g], row) for g in ablation_groups for row in rows)


def ablation_rows(choice: str) -> list[str]:
    """``--ablation-rows``: comma-separated names from ABLATIONS, or "all"."""
    rows = list(ABLATIONS) if choice == "all" else [r for r in choice.split(",") if r]
    unknown = [r for r in rows if r not in ABLATIONS]
    if unknown:
        raise SystemExit(
            f"--ablation-rows: unknown {unknown[0]!r}; expected all or some of {', '.join(ABLATIONS)}"
        )
    return rows


def ablation_groups(choice: str) -> list[str]:
    if choice == "all":
        return [g.name for g in GROUPS]
    if choice == "none":
        return []
    if choice in {g.name for g in GROUPS}:
        return [choice]
    raise SystemExit(
        f"--ablations: expected all, none or a group ({', '.join(g.name for g in GROUPS)}), got {choice!r}"
    )


def headline(per_system: dict[str, dict[str, float]], frames_per_s: float | None) -> dict[str, Any]:
    """The JSON's top-level verdicts from per-system scores (keys model_h, persistence_h, fno_h)."""
    systems = list(per_system)
    return {
        "wins_persistence_1": [
            s for s in systems if per_system[s]["model_1"] < per_system[s]["persistence_1"]
        ],
        # At h=8 persistence above 1 means the dynamics have decorrelated: beating it there says
        # nothing.
        "wins_persistence_8": [
            s
            for s in systems
            if per_system[s]["persistence_8"] < 1.0
            and per_system[s]["model_8"] < per_system[s]["persistence_8"]
        ],
        # At h=16 only where persistence < 1.5 (the rule): beyond it every forecast is
        # noise.
        "wins_persistence_16": [
            s
            for s in systems
            if per_system[s]["persistence_16"] < 1.5
            and per_system[s]["model_16"] < per_system[s]["persistence_16"]
        ],
        "wins_fno_1": [s for s in systems if per_system[s]["model_1"] < per_system[s]["fno_1"]],
        # The bar for the transformer itself: raw <= 0.75x copy-tokens at the next step.
        "raw_vs_copy_tokens_1": {
            s: round(per_system[s]["raw_1"] / per_system[s]["copy_tokens_1"], 3) for s in systems
        },
        "n_systems": len(systems),
        "frames_per_s": None if frames_per_s is None else round(frames_per_s, 2),
    }


def per_system_entry(mean: dict[str, dict[str, float]], default_method: str) -> dict[str, float]:
    """One system's JSON entry from ``summarize``'s ``vrmse[name]["mean"]`` ({method: {"h":
    value}})."""
    out: dict[str, float] = {}
    for h in HORIZONS:
        out[f"model_{h}"] = mean[default_method][str(h)]
        out[f"raw_{h}"] = mean["ar"][str(h)]
        out[f"persistence_{h}"] = mean["persistence"][str(h)]
        out[f"fno_{h}"] = mean["fno"][str(h)]
        out[f"ceiling_{h}"] = mean["tokenizer_ceiling"][str(h)]
        out[f"copy_tokens_{h}"] = mean["copy_tokens"][str(h)]
    return {k: round(v, 4) for k, v in out.items()}


ROWS = (  # (label, key in a row's scores)
    ("persistence", "persistence"),
    ("copy-tokens", "copy_tokens"),
    ("token ceiling", "tokenizer_ceiling"),
    ("FNO (The Well)", "fno"),
    ("ours raw", "ar"),
    # the default where the refiner helped held-out windows (JSON model_*)
    ("ours + refine", "ar_refined"),
    # the default method, transformer in bfloat16 (--dtype bfloat16)
    ("ours default, bf16", "ar_bf16"),
    ("abl: raster AR", "raster"),
    ("abl: plain tokens", "plain_tokens"),
    ("abl: refiner teacher-forced", "refiner_tf"),
    ("abl: digits head, expected level", "digits_head"),
    ("abl: + pushforward 0.5", "pushforward"),
    ("abl: + code noise", "code_noise"),
    ("abl: shift (jitter) flipped", "shift"),
    ("abl: greedy expected code", "greedy_mean"),
    ("abl: flow matching, latents", "flow_matching"),
)


def format_table(scores: dict[str, dict[str, dict[str, float]]], fps: dict[str, float]) -> str:
    """``scores`` {system: {row key: {"1": v, "4": v, "8": v}}} → a fixed-width table; '–' where
    absent."""
    systems = list(scores)
    width = 6 * len(HORIZONS)  # a system's h columns; a longer name pads them on the left
    pads = {s: " " * (max(width, len(s)) - width + 2) for s in systems}
    head = (
        f"{'method':<28}"
        + "".join(f"{s:>{len(pads[s]) + width}}" for s in systems)
        + f"{'frames/s':>10}"
    )
    sub = f"{'':<28}" + "".join(
        pads[s] + "".join(f"{'h' + str(h):>6}" for h in HORIZONS) for s in systems
    )
    lines = [head, sub]
    for label, key in ROWS:
        if not any(key in scores[s] for s in systems):
            continue
        cells = []
        for s in systems:
            v = scores[s].get(key)
            cells.append(
                pads[s] + "".join(f"{v[str(h)]:>6.3f}" if v else f"{'–':>6}" for h in HORIZONS)
            )
        rate = f"{fps[key]:>10.1f}" if key in fps else f"{'–':>10}"
        lines.append(f"{label:<28}" + "".join(cells) + rate)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- our
# pipeline
def make_shards(work: Path, group: Group, args) -> tuple[Path, dict[str, str]]:
    """Simulate the group's systems and shard them (4 + 1 frame windows every ``--stride`` frames)
    → (shards, {dataset: label})."""
    dirs, labels = [], {}
    for system, resolution in group.systems:
        out = work / "data" / group.name / system
        start = time.perf_counter()
        simulate_dataset(
            system,
            out,
            n_traj=args.n_traj,
            n_steps=args.n_steps,
            resolution=resolution,
            seed=args.seed,
            overwrite=True,
        )
        dirs.append(out)
        labels[system] = system_label(system, resolution)
        log(f"  simulated {labels[system]} in {time.perf_counter() - start:.1f} s")
    shards = work / "shards" / group.name
    shard_datasets(dirs, shards, WindowSpec(N_INPUT, 1, args.stride), workers=1, overwrite=True)
    return shards, labels


# ---------------------------------------------------------------------------------------------- FNO
# ----------------------------------------------------------------------------------------------
# evaluation
def rollout_rate(
    forecast: Callable[[torch.Tensor, int], Any], ctx: torch.Tensor, n_frames: int
) -> float:
    """Frames/s of ``forecast(ctx, n)`` at batch 1, after a one-frame warm-up."""
    forecast(ctx, 1)
    start = time.perf_counter()
    forecast(ctx, n_frames)
    return n_frames / (time.perf_counter() - start)


def first_test_window(shards: Path, dataset: str) -> torch.Tensor:
    batch = next(
        iter(evaluation_windows(shards, "test", 1, batch_size=1, max_windows=1, datasets=[dataset]))
    )
    return batch.context


def score(
    pm, shards: Path, methods: tuple[str, ...], args, extra: dict | None = None
) -> dict[str, Any]:
    scores, _ = score_windows(
        pm,
        shards,
        "test",
        HORIZON,
        methods=methods,
        max_windows=args.eval_windows,
        seed=args.seed,
        extra=extra,
    )
    return summarize(scores, list(HORIZONS))


# ----------------------------------------------------------------------------------------------
# main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--minutes", type=float, default=20.0, help="overall budget the stage defaults derive from"
    )
    p.add_argument(
        "--tok-seconds", type=float, default=None, help="tokenizer training, summed over groups"
    )
    p.add_argument("--ar-seconds", type=float, default=None, help="AR training, summed over groups")
    p.add_argument(
        "--refine-seconds",
        type=float,
        default=None,
        help="refiner (pairs + fit), summed over groups",
    )
    p.add_argument(
        "--fno-seconds", type=float, default=None, help="FNO total (default: ours, measured)"
    )
    p.add_argument(
        "--ablations", default="ns32", help="all | none | a group (2d64, ns32, burgers1d)"
    )
    p.add_argument(
        "--ablation-rows",
        default=DEFAULT_ABLATION_ROWS,
        help=f"all or some of: {', '.join(ABLATIONS)}",
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="learning curve instead of the table: NS 32² and Gray–Scott 64² at 0.5x, 1x, 3x the default budget",
    )
    p.add_argument(
        "--groups", default=",".join(g.name for g in GROUPS), help="groups to run (comma-separated)"
    )
    p.add_argument(
        "--curve-groups", default="ns32,gs64", help="--curve: the groups to run (ns32, gs64)"
    )
    p.add_argument(
        "--n-traj", type=int, default=6, help="trajectories per parameter set (split 4/1/1)"
    )
    p.add_argument(
        "--n-steps", type=int, default=None, help="frames per trajectory (simulator default)"
    )
    p.add_argument("--stride", type=int, default=2, help="frames between training windows' starts")
    p.add_argument(
        "--refine-windows",
        type=int,
        default=32,
        help="training windows per dataset for the refiner (NS@32, same AR and steps: 8 windows gave refined "
        "h=1/4/8 0.204/0.592/0.944, 32 gave 0.194/0.463/0.807)",
    )
    p.add_argument("--eval-windows", type=int, default=16, help="test windows per dataset")
    p.add_argument(
        "--fps-frames", type=int, default=16, help="frames rolled out for the frames/s figures"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument(
        "--workdir", default=None, help="keep artefacts here (default: a temporary directory)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@dataclass
class GroupResult:
    table: dict[str, dict[str, dict[str, float]]]  # {system label: {row key: {"h": VRMSE}}}
    per_system: dict[str, dict[str, float]]
    ablations: dict[str, dict[str, dict[str, float]]]
    fps: dict[str, float]  # row key → frames/s at batch 1 on the group's first system
    seconds: dict[str, float]
    steps: dict[str, Any]


@dataclass
class Trained:
    """A group's default pipeline and FNOs, trained: what scoring, frames/s and the ablations
    read."""

    shards: Path
    labels: dict[str, str]
    ar: Path
    pm: Any
    fno: Callable


def train_group(
    group: Group, budget: dict[str, float], work: Path, args, res: GroupResult
) -> Trained:
    """Data, our default pipeline and the FNOs at equal time; scores of every method into
    ``res``."""
    start = time.perf_counter()
    shards, labels = make_shards(work, group, args)
    res.seconds["data"] = time.perf_counter() - start
    ours = work / group.name / "ours"
    ar, seconds, res.steps["ours"] = train_pipeline(
        shards, ours, budget, args, ar_extra=group_ar_overrides(group.name)
    )
    res.seconds.update(seconds)
    ours_s = sum(seconds.values())
    log(
        f"  ours: {ours_s:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + "; steps "
        + ", ".join(f"{k} {v}" for k, v in res.steps["ours"].items())
        + ")"
    )
    pm = PhysicsModel.from_pretrained(ar)
    fno_total = args.fno_seconds * group.share if args.fno_seconds is not None else ours_s
    start, fnos = time.perf_counter(), {}
    for name in pm.dataset_names:
        share = fno_total / len(pm.dataset_names)
        fnos[name] = train_fno(shards, name, len(pm.channel_names(name)), share, args.seed, N_INPUT)
        log(
            f"  FNO {labels[name]}: {fnos[name][2]} steps in {share:.0f} s ({fnos[name][3] / 1e6:.1f}M parameters)"
        )
    res.seconds["fno"] = time.perf_counter() - start
    res.steps["fno"] = {labels[n]: f[2] for n, f in fnos.items()}
    fno = fno_forecaster(fnos, N_INPUT)

    start = time.perf_counter()
    default = "ar_refined" if pm.refines_by_default else pm.method  # evaluate's default_method
    summary = score(
        pm,
        shards,
        ("ar", "ar_refined", "persistence", "copy_tokens", "tokenizer_ceiling"),
        args,
        {"fno": fno},
    )
    for name, d in summary["vrmse"].items():
        res.table[labels[name]] = dict(d["mean"])
        res.per_system[labels[name]] = {
            **per_system_entry(d["mean"], default),
            "n_windows": summary["n_windows"][name],
        }
    res.seconds["evaluate"] = time.perf_counter() - start
    return Trained(shards, labels, ar, pm, fno)


def measure_rates(t: Trained, args, res: GroupResult) -> None:
    """Frames/s at batch 1 on the group's first system, and the bf16 transformer's speed and
    scores."""
    start = time.perf_counter()
    pm, first = t.pm, t.pm.dataset_names[0]
    default = "ar_refined" if pm.refines_by_default else pm.method
    ctx = first_test_window(t.shards, first)
    res.fps = {
        "ar": rollout_rate(
            lambda c, n: pm.rollout(c, n, first, refine=False), ctx, args.fps_frames
        ),
        "ar_refined": rollout_rate(
            lambda c, n: pm.rollout(c, n, first, refine=True), ctx, args.fps_frames
        ),
        # the headline
        "default": rollout_rate(lambda c, n: pm.rollout(c, n, first), ctx, args.fps_frames),
        "fno": rollout_rate(lambda c, n: t.fno(c, n, first), ctx, args.fps_frames),
    }
    # The same model with its transformer in bfloat16 (rollout/evaluate --dtype bfloat16): speed and
    # scores.
    pm16 = PhysicsModel.from_pretrained(t.ar, dtype="bfloat16")
    res.fps["ar_bf16"] = rollout_rate(lambda c, n: pm16.rollout(c, n, first), ctx, args.fps_frames)
    log(
        f"  frames/s at batch 1 on {t.labels[first]}: "
        + ", ".join(f"{k} {v:.1f}" for k, v in res.fps.items())
    )
    res.seconds["frames_per_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for name, d in score(pm16, t.shards, (default,), args)["vrmse"].items():
        res.table[t.labels[name]]["ar_bf16"] = d["mean"][default]
        res.per_system[t.labels[name]].update(
            {f"model_bf16_{h}": round(d["mean"][default][str(h)], 4) for h in HORIZONS}
        )
    res.seconds["evaluate_bf16"] = time.perf_counter() - start


def train_ablations(
    t: Trained,
    budget: dict[str, float],
    out: Path,
    args,
    res: GroupResult,
    names: list[str],
    group: str,
) -> dict[str, Any]:
    """Train the chosen ablations' models (each one lever of the default pipeline flipped) → {name:
    model}."""
    models: dict[str, Any] = {}
    tokenized = (out / "ours" / "tokenizer", out / "ours" / "tokens")  # the default pipeline's
    for key in names:
        start = time.perf_counter()
        if key == "plain_tokens":
            run, _, res.steps[key] = train_pipeline(
                t.shards, out / key, budget, args, "tiny.yaml", ar_extra=group_ar_overrides(group)
            )
            models[key] = PhysicsModel.from_pretrained(run)
        elif key == "refiner_tf":
            # teacher-forced pairs: one step from true context each, on 4x the windows (the same
            # number of pairs)
            res.steps[key] = train_refiner(
                t.ar,
                t.shards,
                out / key,
                budget["refiner"],
                1,
                REFINE_ROLLOUT_STEPS * args.refine_windows,
                args.seed,
            )
            models[key] = PhysicsModel.from_pretrained(t.ar, refiner=out / key)
        elif key in AR_ABLATIONS:
            prediction, overrides = AR_ABLATIONS[key]
            extra = group_ar_overrides(group, overrides)
            run, _, res.steps[key] = train_pipeline(
                t.shards,
                out / key,
                budget,
                args,
                prediction=prediction,
                tokenized=tokenized,
                ar_extra=extra,
            )
            models[key] = PhysicsModel.from_pretrained(run)
        elif key == "flow_matching":
            # the continuous alternative on the default tokenizer's latents; it has no refiner, so
            # it trains for the AR model's and the refiner's budgets together
            run, res.steps[key] = train_flow_matching(
                t.shards,
                tokenized[0],
                tokenized[1],
                out / key,
                budget["ar"] + budget["refiner"],
                args.seed,
            )
            models[key] = PhysicsModel.from_pretrained(run)
        else:  # a decoding lever: the default model, decoded another way
            models[key] = PhysicsModel.from_pretrained(t.ar)
            models[key].model.config.greedy = DECODE_ABLATIONS[key]
        res.seconds[f"abl_{key}"] = time.perf_counter() - start
    return models


def run_ablations(
    t: Trained, budget: dict[str, float], work: Path, group: Group, args, res: GroupResult
) -> None:
    """The ablation rows: trained at the default pipeline's per-stage budgets, scored by their
    default method."""
    names = ablation_rows(args.ablation_rows)
    models = train_ablations(t, budget, work / group.name, args, res, names, group.name)
    first = t.pm.dataset_names[0]
    ctx = first_test_window(t.shards, first)
    start = time.perf_counter()
    for key, model in models.items():
        method = "ar_refined" if model.refines_by_default else model.method
        # an AR row: raw and refined; the flow-matching row: "diffusion", at its config's
        # sampling_steps
        methods = ("ar", "ar_refined") if model.kind == "ar" else (model.method,)
        s = score(model, t.shards, methods, args)
        for name, d in s["vrmse"].items():
            res.table[t.labels[name]][key] = d["mean"][method]
            res.ablations.setdefault(t.labels[name], {})[key] = {
                f"{k}_{h}": round(d["mean"][k][str(h)], 4) for k in methods for h in HORIZONS
            }
            res.ablations[t.labels[name]][key]["default_method"] = method
        res.fps[key] = rollout_rate(partial(model.rollout, dataset=first), ctx, args.fps_frames)
        log(f"  ablation {key}: frames/s at batch 1 on {t.labels[first]} {res.fps[key]:.1f}")
    res.seconds["abl_evaluate"] = time.perf_counter() - start


def run_group(
    group: Group, budget: dict[str, float], work: Path, args, with_ablations: bool
) -> GroupResult:
    """Data, our pipeline, the FNOs at equal time, scoring, frames/s, and (``with_ablations``) the
    ablations."""
    res = GroupResult({}, {}, {}, {}, {}, {})
    trained = train_group(group, budget, work, args, res)
    measure_rates(trained, args, res)
    if with_ablations:
        run_ablations(trained, budget, work, group, args, res)
    return res


def run_curve(args, work: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``--curve``: the NS 32² group and a Gray–Scott-only 64² group at CURVE_MULTIPLIERS x the
    default budget (every stage and the FNO scaled alike) → {group: {multiplier: {raw_h, model_h,
    fno_h}}}."""
    budgets = plan_budgets(
        args.minutes, args.tok_seconds, args.ar_seconds, args.refine_seconds, CURVE_GROUPS
    )
    curve: dict[str, dict[str, dict[str, float]]] = {}
    for group in (g for g in CURVE_GROUPS if g.name in args.curve_groups.split(",")):
        base = budgets[group.name]
        for mult in CURVE_MULTIPLIERS:
            log(
                f"== curve {group.name} at {mult}x: "
                + ", ".join(f"{k} {v * mult:.0f} s" for k, v in base.items())
            )
            res = GroupResult({}, {}, {}, {}, {}, {})
            train_group(
                group, {k: v * mult for k, v in base.items()}, work / f"curve{mult}", args, res
            )
            entry = next(iter(res.per_system.values()))
            point = {
                f"{k}_{h}": entry[f"{k}_{h}"]
                for k in ("raw", "model", "fno")
                for h in CURVE_HORIZONS
            }
            point["steps_ar"], point["steps_fno"] = (
                res.steps["ours"]["ar"],
                next(iter(res.steps["fno"].values())),
            )
            curve.setdefault(group.name, {})[f"{mult:g}"] = point
            log(f"   {group.name} {mult:g}x: " + ", ".join(f"{k} {v}" for k, v in point.items()))
    return curve


def format_curve(curve: dict[str, dict[str, dict[str, float]]]) -> str:
    cols = [f"{k}_{h}" for k in ("raw", "model", "fno") for h in CURVE_HORIZONS]
    lines = [
        f"{'group':<10}{'budget':>8}"
        + "".join(f"{c:>10}" for c in cols)
        + f"{'AR steps':>10}{'FNO steps':>10}"
    ]
    for group, points in curve.items():
        for mult, p in points.items():
            lines.append(
                f"{group:<10}{mult + 'x':>8}"
                + "".join(f"{p[c]:>10.3f}" for c in cols)
                + f"{p['steps_ar']:>10}{p['steps_fno']:>10}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="physfm-bench-forecast-"))
    log(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; workdir {work}; seed {args.seed}"
    )
    if args.curve:
        t_total = time.perf_counter()
        curve = run_curve(args, work)
        log(
            "\nlearning curve: VRMSE at h=1 and h=8 (test split, greedy; raw = the transformer alone, model = "
            "our default method, FNO at equal time) against the budget (x the default)"
        )
        log(format_curve(curve))
        result = {
            "curve": curve,
            "seconds": round(time.perf_counter() - t_total, 1),
            "seed": args.seed,
        }
        print(json.dumps(result))
        return result
    return run_bench(args, work)


def run_bench(args, work: Path) -> dict[str, Any]:
    groups = [g for g in GROUPS if g.name in args.groups.split(",")]
    abl = [g for g in ablation_groups(args.ablations) if g in {x.name for x in groups}]
    rows = tuple(ablation_rows(args.ablation_rows))
    budgets = plan_budgets(args.minutes, args.tok_seconds, args.ar_seconds, args.refine_seconds)
    t_total = time.perf_counter()
    log(
        "plan (s): "
        + "; ".join(
            f"{g.name} " + ", ".join(f"{k} {v:.0f}" for k, v in budgets[g.name].items())
            for g in groups
        )
        + f"; FNO = ours; ablations on {', '.join(abl) or 'none'} ({', '.join(rows)}); training in all "
        f"{planned_training_seconds({g.name: budgets[g.name] for g in groups}, abl, rows):.0f} s"
    )
    results = {}
    for group in groups:
        log(f"== group {group.name}: {', '.join(system_label(*s) for s in group.systems)}")
        results[group.name] = run_group(group, budgets[group.name], work, args, group.name in abl)
    total = time.perf_counter() - t_total
    # The headline frames/s: the default model at 64² when that group ran, else the first group's.
    fps_group = results.get("2d64") or next(iter(results.values()))
    fps = {**{k: v for r in results.values() for k, v in r.fps.items()}, **fps_group.fps}
    table = {k: v for r in results.values() for k, v in r.table.items()}
    per_system = {k: v for r in results.values() for k, v in r.per_system.items()}
    seconds = {f"{g}/{k}": v for g, r in results.items() for k, v in r.seconds.items()}
    log(
        "\nwall time per stage (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        + f"; total {total:.0f}"
    )
    log("optimizer steps per group: " + "; ".join(f"{g} {r.steps}" for g, r in results.items()))
    log(
        f"\nVRMSE of the k-th predicted frame, test split (<= {args.eval_windows} windows per system, greedy; "
        "mean over fields; 1.0 = the spatial mean). Ablation rows: the default pipeline with one lever flipped, "
        "scored by its default method, same budgets. frames/s: batch 1 on the first system of a group (ours and "
        f"FNO: {'2d64' if '2d64' in results else next(iter(results))}; ablations: their group)."
    )
    log(format_table(table, fps))
    result: dict[str, Any] = {
        "per_system": per_system,
        **headline(per_system, fps_group.fps["default"]),
        "frames_per_s_bf16": round(fps_group.fps["ar_bf16"], 2),
        "ablations": {k: v for r in results.values() for k, v in r.ablations.items()},
        "frames_per_s_all": {k: round(v, 2) for k, v in fps.items()},
        "steps": {g: r.steps for g, r in results.items()},
        "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "total": round(total, 1)},
        "minutes": args.minutes,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

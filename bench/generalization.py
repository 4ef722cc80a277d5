"""Does the AR transformer learn the dynamics or memorise its training windows? Fixed optimizer
steps on training sets of growing size, scored on the training split and on held-out test
trajectories.

One group (``--group``, bench/forecast.py's: ns32 = Navier–Stokes at 32², gs64 = Gray–Scott at 64²)
is simulated with each ``--n-traj`` (trajectories per parameter set, 80/10/10 into
train/valid/test); one conditional tokenizer is trained for ``--tok-steps`` on the smallest training
set and encodes every set, so the token ceiling is the same for all. For each set the tiny AR model
(configs/pretrain/tiny.yaml, the default head, ``extra`` overrides from ``--ar-overrides``) trains
for ``--steps`` optimizer steps — a step count, not a clock, so a busy machine changes the time and
not the numbers. Every model is scored on the test split of the largest set (its trajectories are in
no training set: the splits take trajectories [0, n_train) for training) and on ``--eval-windows``
windows of its own training split: raw greedy forecasts (no refiner), copy-tokens, persistence and
the token ceiling, VRMSE at h = 1 and 8.

A model that learns the dynamics is below copy-tokens on the test split; one that memorises is far
below it on its training windows and at or above it on the test split. The ceiling bounds every raw
forecast.

    python bench/generalization.py [--group ns32] [--n-traj 6,24] [--steps 300] [--tok-steps 600]
                                   [--eval-windows 16] [--ar-overrides "k=v k=v"] [--workdir DIR] [--seed 0]

Prints a table, then as its last line one JSON object: ``sizes`` {n_traj: {train_windows,
final_loss, train: {raw_1, raw_8, copy_tokens_1, ...}, test: {...}}}, ``ceiling_over_copy_tokens_1``
(test split), ``steps``, ``group``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

from bench.forecast import CURVE_GROUPS, GROUPS, make_shards
from bench.pipeline import train_ar
from data_pipelines.config import load_config
from data_pipelines.manifest import Manifest
from physfm.eval.evaluate import score_windows, summarize
from physfm.inference import PhysicsModel
from tokenizer.encode import encode_shards
from tokenizer.training import TokenizerTrainConfig, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
HORIZONS = (1, 8)
METHODS = ("ar", "copy_tokens", "persistence", "tokenizer_ceiling")
NAMES = {
    "ar": "raw",
    "copy_tokens": "copy_tokens",
    "persistence": "persistence",
    "tokenizer_ceiling": "ceiling",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_tokenizer_steps(shards: Path, out: Path, steps: int, seed: int) -> Path:
    """The tiny conditional tokenizer for a fixed step count (no clock)."""
    cfg = load_config(
        TokenizerTrainConfig,
        ROOT / "configs/tokenizer/tiny_conditional.yaml",
        [
            f"data.shards={shards}",
            f"out={out}",
            f"seed={seed}",
            f"trainer.max_steps={steps}",
            "trainer.max_time_s=0",
            "trainer.wandb=false",
            "data.val_batches=0",
            f"trainer.log_every={steps}",
            "trainer.verbose=false",
        ],
    )
    threads = torch.get_num_threads()
    try:
        return train_tokenizer(cfg)
    finally:
        torch.set_num_threads(threads)  # the tokenizer trains single-threaded


def scores(
    pm: PhysicsModel, shards: Path, split: str, n_windows: int, seed: int
) -> dict[str, float]:
    """{raw_h, copy_tokens_h, persistence_h, ceiling_h} (mean over fields and datasets) on
    ``split``."""
    raw, _ = score_windows(
        pm, shards, split, max(HORIZONS), methods=METHODS, max_windows=n_windows, seed=seed
    )
    per_dataset = summarize(raw, list(HORIZONS))["vrmse"]
    out: dict[str, float] = {}
    for method, name in NAMES.items():
        for h in HORIZONS:
            values = [d["mean"][method][str(h)] for d in per_dataset.values()]
            out[f"{name}_{h}"] = round(sum(values) / len(values), 4)
    return out


def final_loss(run: Path) -> float | None:
    """The last logged training loss of an AR run (its CSV log)."""
    rows = [
        line.split(",")
        for p in sorted(run.glob("logs/**/metrics.csv"))
        for line in p.read_text().splitlines()
    ]
    if not rows:
        return None
    col = rows[0].index("train/loss") if "train/loss" in rows[0] else None
    values = [r[col] for r in rows[1:] if col is not None and col < len(r) and r[col]]
    return round(float(values[-1]), 4) if values else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--group", default="ns32", choices=["ns32", "gs64"], help="bench/forecast.py's group"
    )
    p.add_argument(
        "--n-traj", default="6,24", help="training-set sizes: trajectories per parameter set"
    )
    p.add_argument("--steps", type=int, default=300, help="AR optimizer steps per model")
    p.add_argument("--tok-steps", type=int, default=600, help="tokenizer optimizer steps")
    p.add_argument("--stride", type=int, default=2, help="frames between training windows' starts")
    p.add_argument("--eval-windows", type=int, default=16, help="windows scored per split")
    p.add_argument(
        "--ar-overrides", default="", help="extra AR config overrides, space-separated k=v"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument(
        "--workdir", default=None, help="keep artefacts here (default: a temporary directory)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.sizes = sorted({int(x) for x in args.n_traj.split(",")})
    if args.sizes[0] < 3:
        p.error(f"--n-traj {args.n_traj}: each size needs >= 3 trajectories (train, valid, test)")
    return args


def format_table(sizes: dict[str, dict[str, Any]]) -> str:
    head = f"{'n_traj':>6} {'windows':>7} {'loss':>6}  {'split':<5}" + "".join(
        f"{f'{n} h{h}':>14}" for n in NAMES.values() for h in HORIZONS
    )
    lines = [head]
    for n, row in sizes.items():
        for split in ("train", "test"):
            vals = "".join(
                f"{row[split][f'{name}_{h}']:>14.3f}" for name in NAMES.values() for h in HORIZONS
            )
            loss = f"{row['final_loss']:.3f}" if row["final_loss"] is not None else "-"
            lines.append(f"{n:>6} {row['train_windows']:>7} {loss:>6}  {split:<5}{vals}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    group = next(g for g in (*GROUPS, *CURVE_GROUPS) if g.name == args.group)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="physfm-bench-generalization-"))
    log(f"group {group.name}; sizes {args.sizes}; {args.steps} AR steps; workdir {work}")
    shards_of: dict[int, Path] = {}
    for n in args.sizes:
        ns = types.SimpleNamespace(n_traj=n, n_steps=None, seed=args.seed, stride=args.stride)
        shards_of[n], _ = make_shards(work / f"n{n}", group, ns)
    # where train_tokenizer writes it; reused from --workdir
    tok = work / "tokenizer" / "checkpoint"
    if not (tok / "tokenizer.json").exists():
        start = time.perf_counter()
        tok = train_tokenizer_steps(
            shards_of[args.sizes[0]], work / "tokenizer", args.tok_steps, args.seed
        )
        log(f"tokenizer: {args.tok_steps} steps in {time.perf_counter() - start:.0f} s")
    test_shards = shards_of[args.sizes[-1]]
    sizes: dict[str, dict[str, Any]] = {}
    extra = tuple(o for o in args.ar_overrides.split() if o)
    for n in args.sizes:
        start = time.perf_counter()
        tokens = encode_shards(tok, shards_of[n], work / f"n{n}" / "tokens", splits=["train"])
        windows = Manifest.load(tokens).split("train").n_samples
        run, steps = train_ar(
            tokens, tok, work / f"n{n}" / "ar", "next_frame", 0, args.seed, extra, args.steps
        )
        pm = PhysicsModel.from_pretrained(run, refiner=False)
        sizes[str(n)] = {
            "train_windows": windows,
            "steps": steps,
            "final_loss": final_loss(run),
            "train": scores(pm, shards_of[n], "train", args.eval_windows, args.seed),
            "test": scores(pm, test_shards, "test", args.eval_windows, args.seed),
        }
        log(
            f"n_traj {n}: {windows} training windows, {steps} steps, {time.perf_counter() - start:.0f} s"
        )
    print(format_table(sizes))
    test = sizes[str(args.sizes[-1])]["test"]
    out = {
        "group": group.name,
        "steps": args.steps,
        "sizes": sizes,
        "ceiling_over_copy_tokens_1": round(test["ceiling_1"] / test["copy_tokens_1"], 3),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

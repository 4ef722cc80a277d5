"""Tokenizer quality and speed: the tiny tokenizer vs average-pool + linear-upsampling at equal
latent size.

Makes its own data with the built-in simulators (gray_scott2d, navier_stokes2d, wave2d at 64²,
burgers1d at 128; their default sizes — 10 trajectories per parameter value, 64-100 steps, split
8/1/1 — except 30 for burgers1d, whose single validation trajectory per viscosity was
unrepresentative), shards it into 4 + 1 frame windows, trains the tiny tokenizer
(configs/tokenizer/tiny.yaml) jointly on the three 2D systems for ``--minutes`` and a 1D one on
burgers1d for ``--minutes-1d`` (batch 8 there: 1D steps are overhead-bound, so the larger batch is
nearly free), then on each validation split measures: reconstruction VRMSE per field (The Well's,
physical units, all 5 frames, also per simulation parameter), the same for the pooling baseline at
the same number of latent values (each frame average-pooled to as many unquantised floats, shared
among the fields, as the latent has FSQ values — 4 per token position with [8,5,5,5] — then
bi/linear interpolation back up; the headline "pool" column and JSON keys; where that many floats is
the whole input, as for one 1D field, it would be lossless and the token-grid pooling stands in for
it), the same for a looser pooling onto the token grid (one float per field per token position,
"pool-grid"), code usage and perplexity (combined and per dataset), and encode/decode frames per
second (batch 16, inference, this CPU). Prints tables, then one JSON line: code_usage, vrmse_max,
baseline_vrmse_max, ratio_to_baseline_max, beats_baseline (and more).

On a corpus instead (``--corpus DIR`` from ``physfm corpus``, or ``--systems all|a,b`` to build one
with ``--size``): one tokenizer per dimensionality present (one tokenizer codes one dimensionality),
each on the corpus's ``shards-Nd`` view, every system's every field in the table; budgets
``--minutes`` (2D), ``--minutes-1d`` and ``--minutes-3d``.

    python bench/tokenizer.py [--minutes 5] [--minutes-1d 1.5] [--threads 1] [--workdir DIR] [--seed 0]
    python bench/tokenizer.py --systems all [--size default] [--minutes-3d 5]
    python bench/tokenizer.py --corpus runs/corpus
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")

import torch

from data_pipelines.config import load_config
from data_pipelines.loader import make_loader
from data_pipelines.sharding import WindowSpec, shard_datasets
from data_pipelines.simulators import simulate_dataset
from tokenizer.checkpoint import load_tokenizer
from tokenizer.evaluate import evaluate_tokenizer
from tokenizer.training import TokenizerTrainConfig, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS_2D = ("gray_scott2d", "navier_stokes2d", "wave2d")
SYSTEMS_1D = ("burgers1d",)
N_TRAJ = {"burgers1d": 30}  # others: the simulator's default
EXTRA_1D = ["data.batch_size=8"]


def make_shards(work: Path, systems: tuple[str, ...], name: str, seed: int) -> Path:
    shards = work / f"shards_{name}"
    if (shards / "manifest.json").exists():
        return shards
    dirs = []
    for system in systems:
        out = work / "data" / system
        if not (out / "stats.yaml").exists():
            t0 = time.time()
            simulate_dataset(system, out, n_traj=N_TRAJ.get(system), seed=seed, overwrite=True)
            print(f"  simulated {system} in {time.time() - t0:.0f} s", flush=True)
        dirs.append(out)
    shard_datasets(dirs, shards, WindowSpec(4, 1, 1), workers=2, overwrite=True)
    return shards


def corpus_views(corpus: Path) -> list[tuple[str, Path]]:
    """(run name, shard view) for each dimensionality a ``physfm corpus`` output holds."""
    from data_pipelines.shards import read_manifest

    read_manifest(corpus / "shards")  # one clear error when DIR is not a corpus
    views = [(f"{d}d", corpus / f"shards-{d}d") for d in (2, 1, 3)]
    return [(name, view) for name, view in views if (view / "manifest.json").is_file()]


def datasets_to_tokenize(args: argparse.Namespace, work: Path) -> list[tuple[str, Path]]:
    """(run name, shards) per tokenizer to train: the corpus's views, or the classic 2D + 1D
    sets."""
    if args.corpus:
        return corpus_views(Path(args.corpus))
    if args.systems:
        from data_pipelines.corpus import build_corpus

        systems = None if args.systems == "all" else args.systems.split(",")
        build_corpus(work / "corpus", systems=systems, size=args.size, seed=args.seed, workers=2)
        return corpus_views(work / "corpus")
    runs = []
    for name, systems, minutes in (
        ("2d", SYSTEMS_2D, args.minutes),
        ("1d", SYSTEMS_1D, args.minutes_1d),
    ):
        if minutes > 0:
            print(f"[{name}] data: {', '.join(systems)}", flush=True)
            runs.append((name, make_shards(work, systems, name, args.seed)))
    return runs


def train(
    shards: Path, out: Path, minutes: float, seed: int, threads: int, extra: list[str]
) -> tuple[Path, int, float]:
    cfg = load_config(
        TokenizerTrainConfig,
        ROOT / "configs/tokenizer/tiny.yaml",
        [
            f"data.shards={shards}",
            f"out={out}",
            f"seed={seed}",
            f"trainer.max_time_s={minutes * 60}",
            "trainer.max_steps=1000000",
            f"trainer.num_threads={threads}",
            "trainer.wandb=false",
            "data.val_batches=0",
            "trainer.log_every=1000",
            *extra,
        ],
    )
    # Cosine schedule over the wall-clock budget (see training.lr_factor); max_steps is only a cap.
    t0 = time.time()
    ckpt = train_tokenizer(cfg)
    step = json.loads((ckpt / "tokenizer.json").read_text())["train"]["step"]
    return ckpt, step, time.time() - t0


@torch.no_grad()
def frames_per_second(
    ckpt: Path, shards: Path, n_batches: int = 6, batch_size: int = 16
) -> dict[str, float]:
    tok = load_tokenizer(ckpt)
    loader = make_loader(shards, "valid", batch_size, shuffle=True, seed=1, normalize=False)
    enc_s = dec_s = 0.0
    frames = 0
    for i, batch in enumerate(loader):
        if i > n_batches:
            break
        name = batch["dataset"]
        window = tok.normalize(torch.cat([batch["input"], batch["output"]], dim=1), name)
        t0 = time.perf_counter()
        ids = tok.encode(window, name)
        t1 = time.perf_counter()
        tok.decode(ids, name, n_frames=window.shape[1])
        t2 = time.perf_counter()
        if i == 0:
            continue  # warm-up
        enc_s, dec_s, frames = (
            enc_s + t1 - t0,
            dec_s + t2 - t1,
            frames + window.shape[0] * window.shape[1],
        )
    return {"encode_frames_per_s": frames / enc_s, "decode_frames_per_s": frames / dec_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="training budget of the 2D tokenizer"
    )
    parser.add_argument(
        "--minutes-1d", type=float, default=1.5, help="training budget of the 1D tokenizer"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on a shared 2-core machine; try 2 on an idle one)",
    )
    parser.add_argument(
        "--minutes-3d", type=float, default=5.0, help="training budget of the 3D tokenizer"
    )
    parser.add_argument(
        "--corpus", default=None, metavar="DIR", help="a `physfm corpus` output to measure on"
    )
    parser.add_argument(
        "--systems", default=None, help="build a corpus of these systems first: all or a,b,..."
    )
    parser.add_argument(
        "--size", default="default", help="corpus size preset for --systems (tiny ... large)"
    )
    parser.add_argument(
        "--workdir", default=None, help="keep data and runs here (reused when present)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-tokenizer-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)

    runs = []
    budgets = {"1d": args.minutes_1d, "2d": args.minutes, "3d": args.minutes_3d}
    for name, shards in datasets_to_tokenize(args, work):
        minutes = budgets[name]
        if minutes <= 0:
            continue
        print(f"[{name}] training the tiny tokenizer for {minutes:g} min on {shards}", flush=True)
        extra = EXTRA_1D if name == "1d" else []
        ckpt, steps, train_s = train(
            shards, work / f"run_{name}", minutes, args.seed, args.threads, extra
        )
        metrics = evaluate_tokenizer(
            ckpt, shards, work / f"eval_{name}", split="valid", batch_size=16
        )
        speed = frames_per_second(ckpt, shards)
        runs.append({"name": name, "steps": steps, "train_s": train_s, "metrics": metrics, **speed})

    if not runs:
        sys.exit("bench/tokenizer.py: nothing to train (no data, or every budget is 0 minutes)")
    rows = []
    print(
        f"\n{'dataset':<17}{'field':<12}{'VRMSE':>8}{'pool':>8}{'ratio':>7}{'pool-grid':>10}{'PSNR':>7}"
    )
    for run in runs:
        for dataset, d in run["metrics"]["datasets"].items():
            for field, f in d["fields"].items():
                # Headline baseline: the same number of latent values (pool-latent), except where
                # that many floats is the whole input (one 1D field: the "baseline" would be
                # lossless; it compresses bits, not values), which falls back to the token-grid
                # pooling.
                lossless = d["pool_shapes"]["latent"] == d["pool_shapes"]["spatial"]
                base = f["baseline_vrmse"] if lossless else f["baseline_latent_vrmse"]
                grid_base = f["baseline_vrmse"]
                ratio = f["vrmse"] / max(base, 1e-12)
                rows.append(
                    {
                        "dataset": dataset,
                        "field": field,
                        "vrmse": f["vrmse"],
                        "baseline_vrmse": base,
                        "ratio": ratio,
                        "grid_baseline_vrmse": grid_base,
                        "grid_ratio": f["vrmse"] / max(grid_base, 1e-12),
                    }
                )
                print(
                    f"{dataset:<17}{field:<12}{f['vrmse']:>8.4f}{base:>8.4f}{ratio:>7.2f}"
                    f"{grid_base:>10.4f}{f['psnr']:>7.1f}"
                    + ("  (pool = pool-grid: pool-latent is lossless)" if lossless else "")
                )
            for params, per_field in d.get("vrmse_by_params", {}).items():
                values = " ".join(f"{k}={v:.4f}" for k, v in per_field.items())
                print(f"{'':<17}  {params}: {values}")
    print(f"\n{'run':<5}{'dataset':<17}{'code usage':>11}{'perplexity':>11}{'token grid':>14}")
    usage = {}
    for run in runs:
        m = run["metrics"]
        for dataset, d in m["datasets"].items():
            usage[dataset] = d["code_usage"]
            grid = "x".join(map(str, m["token_grid"][dataset]))
            print(
                f"{run['name']:<5}{dataset:<17}{d['code_usage']:>11.1%}{d['perplexity']:>11.1f}{grid:>14}"
            )
        print(
            f"{run['name']:<5}{'(combined)':<17}{m['overall']['code_usage']:>11.1%}{m['overall']['perplexity']:>11.1f}"
        )
    print(f"\n{'run':<5}{'steps':>7}{'train s':>9}{'encode fr/s':>13}{'decode fr/s':>13}")
    for run in runs:
        print(
            f"{run['name']:<5}{run['steps']:>7}{run['train_s']:>9.0f}{run['encode_frames_per_s']:>13.0f}"
            f"{run['decode_frames_per_s']:>13.0f}"
        )
    two_d = next((r for r in runs if r["name"] == "2d"), runs[0])
    result = {
        "code_usage": two_d["metrics"]["overall"]["code_usage"],
        "code_usage_min": min(r["metrics"]["overall"]["code_usage"] for r in runs),
        "code_usage_per_tokenizer": {
            r["name"]: r["metrics"]["overall"]["code_usage"] for r in runs
        },
        "vrmse_max": max(r["vrmse"] for r in rows),
        "baseline_vrmse_max": max(r["baseline_vrmse"] for r in rows),
        "ratio_to_baseline_max": max(r["ratio"] for r in rows),
        "worst_field": max(rows, key=lambda r: r["ratio"])["dataset"]
        + "/"
        + max(rows, key=lambda r: r["ratio"])["field"],
        "beats_baseline": all(r["vrmse"] < r["baseline_vrmse"] for r in rows),
        "fields_at_half_baseline": sum(r["ratio"] <= 0.5 for r in rows),
        "n_fields": len(rows),
        "fraction_at_half_baseline": sum(r["ratio"] <= 0.5 for r in rows) / len(rows),
        "vrmse": {f"{r['dataset']}/{r['field']}": round(r["vrmse"], 4) for r in rows},
        "baseline_vrmse": {
            f"{r['dataset']}/{r['field']}": round(r["baseline_vrmse"], 4) for r in rows
        },
        "ratio_to_baseline": {f"{r['dataset']}/{r['field']}": round(r["ratio"], 3) for r in rows},
        "grid_baseline_vrmse_max": max(r["grid_baseline_vrmse"] for r in rows),
        "ratio_to_grid_baseline_max": max(r["grid_ratio"] for r in rows),
        "code_usage_per_dataset": usage,
        "steps": {r["name"]: r["steps"] for r in runs},
        "minutes": {r["name"]: budgets[r["name"]] for r in runs},
        "data": args.corpus
        or (f"corpus of {args.systems} ({args.size})" if args.systems else "2D + 1D classic"),
        "encode_frames_per_s": two_d["encode_frames_per_s"],
        "decode_frames_per_s": two_d["decode_frames_per_s"],
        "config": "configs/tokenizer/tiny.yaml",
        "seed": args.seed,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
    }
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

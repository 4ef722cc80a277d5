"""AR over tokens vs flow matching over continuous latents, at equal training wall-clock, on
quickstart-like data.

Makes its own data: the quickstart's systems (gray_scott2d, navier_stokes2d; 6 trajectories per
parameter value, 24 steps) at ``--resolution`` (32 by default, half the quickstart's 64, so that the
whole bench fits a few minutes on 2 cores: 8x8 latent cells per frame), 4 + 1 frame windows. Trains
the tiny tokenizer (configs/tokenizer/tiny.yaml, ``--tokenizer-steps``), then from the same
tokenizer:

* AR: ``physfm pretrain`` on its token shards (configs/pretrain/tiny.yaml, a smaller transformer
  below);
* diffusion: ``physfm pretrain`` with ``model.kind=diffusion``
  (configs/pretrain/diffusion_tiny.yaml) on the field shards, the same transformer sizes;

each for ``--train-seconds`` of training: short calibration runs measure each model's seconds per
step (start-up excluded) and set its ``max_steps`` so that both fill the same budget (the cosine
schedule then ends where training ends). ``--clock wall`` (default) budgets wall-clock; ``--clock
cpu`` budgets the training process's CPU seconds, which other processes on a shared machine do not
inflate (with ``--threads 1`` and the in-process loader it equals the wall-clock of an idle core).
AR + refinement adds the refinement U-Net fitted to the AR model (the quickstart's refine settings;
its extra training time is printed). Then on the test split, ``--max-windows`` windows per dataset,
horizon 8: next-step and 8-step VRMSE (The Well's, physical units, mean over datasets and fields)
and rollout wall-clock per predicted frame (batched windows, this CPU, tokenizer encode/decode
included) for AR (greedy), AR + refinement, and diffusion at 1, 4 and 16 Euler steps (seed 0).
Persistence, the tokenizer ceiling (the true future's tokens decoded: the AR model's best case) and
the latent ceiling (the true future's continuous latents decoded: the diffusion model's best case)
are printed beside them.

    python bench/ar_vs_diffusion.py [--train-seconds 75] [--clock wall|cpu] [--tokenizer-steps 250]
                                    [--resolution 32] [--max-windows 8] [--threads N] [--workdir DIR] [--seed 0]

Last line: JSON with ar_1, ar_8, ar_refined_1, ar_refined_8, diffusion_1, diffusion_8 (VRMSE at the
step count with the best 8-step VRMSE), diffusion_steps (that count), and the per-step-count
figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")

import torch

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = {
    "gray_scott2d": dict(n_traj=6, n_steps=24),
    "navier_stokes2d": dict(n_traj=6, n_steps=24),
}
# The same transformer for both sides (smaller than configs/model/tiny.yaml so that a minute buys
# steps).
MODEL = [
    "model.n_layer=4",
    "model.d_model=128",
    "model.n_head=4",
    "model.n_kv_head=2",
    "model.ffn_hidden=384",
]
COMMON = [
    "trainer.logger=csv",
    "trainer.progress_bar=false",
    "data.num_workers=0",
    "data.batch_size=8",
    "data.val_batches=0",
    "optim.lr=2e-3",
    "optim.warmup_steps=10",
    "trainer.keep_last=1",
]
HORIZON, DIFFUSION_STEPS = 8, (1, 4, 16)


def log(msg: str) -> None:
    print(msg, flush=True)


def make_data(work: Path, resolution: int, seed: int) -> Path:
    from data_pipelines.sharding import WindowSpec, shard_datasets
    from data_pipelines.simulators import simulate_dataset

    shards = work / "shards"
    if (shards / "manifest.json").exists():
        return shards
    dirs = [
        simulate_dataset(
            name, work / "data" / name, resolution=resolution, seed=seed, overwrite=True, **sizes
        )
        for name, sizes in SYSTEMS.items()
    ]
    shard_datasets([str(d) for d in dirs], shards, WindowSpec(4, 1, 1), overwrite=True, workers=2)
    return shards


def train_tokenizer(work: Path, shards: Path, steps: int, seed: int) -> Path:
    from data_pipelines.config import load_config
    from tokenizer.training import TokenizerTrainConfig
    from tokenizer.training import train_tokenizer as train

    ckpt = work / "tokenizer" / "checkpoint"
    if ckpt.exists():
        return ckpt
    cfg = load_config(
        TokenizerTrainConfig,
        ROOT / "configs/tokenizer/tiny.yaml",
        [
            f"data.shards={shards}",
            f"out={work / 'tokenizer'}",
            f"trainer.max_steps={steps}",
            "trainer.wandb=false",
            "trainer.verbose=false",
            "data.val_batches=0",
            f"seed={seed}",
        ],
    )
    return train(cfg)


def pretrain(kind: str, out: Path, data: list[str], steps: int, seed: int) -> dict:
    """Train ``steps`` steps; metrics.json plus the run's measured ``wall_s`` and ``cpu_s`` (this
    process)."""
    from physfm.train.pretrain import load_pretrain_config, run_pretrain

    config = ROOT / (
        "configs/pretrain/diffusion_tiny.yaml"
        if kind == "diffusion"
        else "configs/pretrain/tiny.yaml"
    )
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time, also in a reused --workdir
    cfg = load_pretrain_config(
        str(config),
        [
            *MODEL,
            *COMMON,
            *data,
            f"out={out}",
            f"trainer.max_steps={steps}",
            f"trainer.checkpoint_every={steps}",
            f"trainer.log_every={min(10, steps)}",
            f"seed={seed}",
            "resume=none",
        ],
    )
    wall, cpu = time.perf_counter(), time.process_time()
    run_pretrain(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    return {**metrics, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def seconds_per_step(
    kind: str, out: Path, data: list[str], grid: list[int], seed: int, clock: str
) -> float:
    """Steady-state seconds per optimiser step: wall-clock from a short run's throughput monitor, or
    CPU seconds from two short runs (their difference cancels the start-up)."""
    data = data + [f"model.grid_shape={grid}"]
    if clock == "cpu":
        short, long = pretrain(kind, out, data, 4, seed), pretrain(kind, out, data, 16, seed)
        return (long["cpu_s"] - short["cpu_s"]) / 12
    metrics = pretrain(kind, out, data, 12, seed)
    tokens_per_step = 8 * 5 * math.prod(grid)  # batch 8, windows of 5 frames
    if "perf_tokens_per_s" in metrics:
        return tokens_per_step / metrics["perf_tokens_per_s"]
    return metrics["seconds"] / 12


def latent_ceiling(dm, shards: Path, max_windows: int) -> dict:
    """VRMSE of the true future's own continuous latents decoded (what a perfect diffusion model
    scores)."""
    from physfm.eval.evaluate import DatasetScores, summarize
    from physfm.eval.windows import evaluation_windows

    scores: dict = {}
    for batch in evaluation_windows(
        shards, "test", HORIZON, batch_size=32, max_windows=max_windows, datasets=dm.dataset_names
    ):
        window = torch.cat([batch.context, batch.truth], 1)
        decoded = dm.decode_latents(
            dm.encode_latents(window, batch.dataset), batch.dataset, n_frames=window.shape[1]
        )
        s = scores.setdefault(batch.dataset, DatasetScores(dm.channel_names(batch.dataset)))
        s.add(
            "latent_ceiling",
            decoded[:, batch.context.shape[1] :].cpu(),
            batch.truth,
            dm.n_spatial_dims,
        )
        s.n_windows += batch.context.shape[0]
    return summarize(scores, [1, HORIZON])["overall"]["latent_ceiling"]


def score(pm, shards: Path, methods: tuple[str, ...], max_windows: int) -> tuple[dict, dict, int]:
    from physfm.eval.evaluate import score_windows, summarize

    scores, seconds = score_windows(
        pm, shards, "test", HORIZON, methods=methods, max_windows=max_windows, batch_size=32, seed=0
    )
    n_windows = sum(s.n_windows for s in scores.values())
    return summarize(scores, [1, HORIZON])["overall"], seconds, n_windows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--train-seconds", type=float, default=75.0, help="training budget per model, in seconds"
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="budget wall-clock (default) or this process's CPU time (a shared, loaded machine)",
    )
    p.add_argument("--tokenizer-steps", type=int, default=250)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--max-windows", type=int, default=8, help="test windows per dataset")
    p.add_argument(
        "--workdir", default=None, help="keep data, tokenizer and runs here (reused if present)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ar-vs-diffusion-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; workdir {work}"
    )

    from physfm.inference import PhysicsModel
    from physfm.train.refine import load_refine_config, run_refine
    from tokenizer.encode import encode_shards

    shards = make_data(work, args.resolution, args.seed)
    tok = train_tokenizer(work, shards, args.tokenizer_steps, args.seed)
    tokens = work / "tokens"
    if not (tokens / "manifest.json").exists():
        encode_shards(tok, shards, tokens)
    log(f"data, tokenizer and tokens ready at {time.perf_counter() - start:.0f} s")
    grid = [args.resolution // 4] * 2
    data = {
        "ar": [f"data.tokens=[{tokens}]", f"tokenizer={tok}"],
        "diffusion": [f"data.shards=[{shards}]", f"tokenizer={tok}"],
    }
    runs, train_info = {}, {}
    for kind in ("ar", "diffusion"):
        per_step = seconds_per_step(
            kind, work / f"calibrate_{kind}", data[kind], grid, args.seed, args.clock
        )
        steps = max(10, int(args.train_seconds / per_step))
        metrics = pretrain(
            kind, work / f"run_{kind}", data[kind] + [f"model.grid_shape={grid}"], steps, args.seed
        )
        runs[kind] = work / f"run_{kind}"
        hist = metrics["loss_history"]
        train_info[kind] = {
            "steps": steps,
            f"{args.clock}_s_per_step": round(per_step, 3),
            "fit_wall_s": metrics["seconds"],
            "run_cpu_s": round(metrics["cpu_s"], 1),
            "n_params": metrics["n_params"],
            "loss_first": hist[0][1],
            "loss_last": hist[-1][1],
        }
        log(
            f"{kind}: {steps} steps ({per_step:.3f} {args.clock} s/step): fit {metrics['seconds']:.0f} s wall, run "
            f"{metrics['cpu_s']:.0f} s CPU; {metrics['n_params'] / 1e6:.2f} M params, loss {hist[0][1]:.3f} → "
            f"{hist[-1][1]:.3f}"
        )
    refine_start = time.perf_counter()
    refine_cfg = load_refine_config(
        None,
        [
            f"ckpt={runs['ar']}",
            f"data.shards={shards}",
            f"out={work / 'refiner'}",
            f"seed={args.seed}",
            "train.steps=150",
            "train.log_every=50",
            "data.n_windows=24",
            "data.val_windows=8",
            "data.batch_size=8",
            "model.width=16",
        ],
    )
    refiner = run_refine(refine_cfg, log=None)
    refine_seconds = time.perf_counter() - refine_start
    log(f"refiner fitted in {refine_seconds:.0f} s (on top of the AR budget)")

    rows: dict[str, dict] = {}
    ar = PhysicsModel.from_pretrained(runs["ar"], refiner=refiner)
    overall, seconds, n_windows = score(
        ar, shards, ("ar", "ar_refined", "persistence", "tokenizer_ceiling"), args.max_windows
    )
    for m in ("ar", "ar_refined", "persistence", "tokenizer_ceiling"):
        rows[m] = {
            "1": overall[m]["1"],
            str(HORIZON): overall[m][str(HORIZON)],
            "s_per_frame": seconds[m] / (n_windows * HORIZON),
        }
    for steps in DIFFUSION_STEPS:
        dm = PhysicsModel.from_pretrained(runs["diffusion"], sampling_steps=steps, sampler="euler")
        overall, seconds, _ = score(dm, shards, ("diffusion",), args.max_windows)
        rows[f"diffusion@{steps}"] = {
            "1": overall["diffusion"]["1"],
            str(HORIZON): overall["diffusion"][str(HORIZON)],
            "s_per_frame": seconds["diffusion"] / (n_windows * HORIZON),
        }
    ceiling = latent_ceiling(dm, shards, args.max_windows)
    rows["latent_ceiling"] = {
        "1": ceiling["1"],
        str(HORIZON): ceiling[str(HORIZON)],
        "s_per_frame": 0.0,
    }
    best = min(DIFFUSION_STEPS, key=lambda s: rows[f"diffusion@{s}"][str(HORIZON)])

    log(
        f"\nTest split, {n_windows} windows ({args.max_windows} per dataset), horizon {HORIZON}; VRMSE mean over "
        "datasets and fields (1.0 = the spatial mean); rollout seconds per predicted frame, batched windows"
    )
    log(f"{'method':<22} {'VRMSE next step':>16} {'VRMSE step 8':>13} {'ms / frame':>11}")
    for name, r in rows.items():
        log(f"{name:<22} {r['1']:>16.3f} {r[str(HORIZON)]:>13.3f} {1000 * r['s_per_frame']:>11.1f}")
    log(
        f"training ({args.clock}-clock budget {args.train_seconds:.0f} s each): AR {train_info['ar']['steps']} steps, "
        f"fit {train_info['ar']['fit_wall_s']:.0f} s wall / run {train_info['ar']['run_cpu_s']:.0f} s CPU; diffusion "
        f"{train_info['diffusion']['steps']} steps, fit {train_info['diffusion']['fit_wall_s']:.0f} s wall / run "
        f"{train_info['diffusion']['run_cpu_s']:.0f} s CPU; the refiner took {refine_seconds:.0f} s more"
    )
    winner_1 = min(("ar", "ar_refined", f"diffusion@{best}"), key=lambda m: rows[m]["1"])
    winner_8 = min(("ar", "ar_refined", f"diffusion@{best}"), key=lambda m: rows[m][str(HORIZON)])
    fastest = min(
        (m for m in rows if m not in ("persistence", "tokenizer_ceiling", "latent_ceiling")),
        key=lambda m: rows[m]["s_per_frame"],
    )
    log(
        f"best next step: {winner_1}; best at step {HORIZON}: {winner_8}; fastest rollout: {fastest}; "
        f"whole bench {time.perf_counter() - start:.0f} s"
    )
    r4 = lambda v: round(float(v), 4)
    result = {
        "ar_1": r4(rows["ar"]["1"]),
        "ar_8": r4(rows["ar"]["8"]),
        "ar_refined_1": r4(rows["ar_refined"]["1"]),
        "ar_refined_8": r4(rows["ar_refined"]["8"]),
        "diffusion_1": r4(rows[f"diffusion@{best}"]["1"]),
        "diffusion_8": r4(rows[f"diffusion@{best}"]["8"]),
        "diffusion_steps": best,
        "by_steps": {
            s: {
                "vrmse_1": r4(rows[f"diffusion@{s}"]["1"]),
                "vrmse_8": r4(rows[f"diffusion@{s}"]["8"]),
                "ms_per_frame": round(1000 * rows[f"diffusion@{s}"]["s_per_frame"], 2),
            }
            for s in DIFFUSION_STEPS
        },
        "ms_per_frame": {m: round(1000 * rows[m]["s_per_frame"], 2) for m in ("ar", "ar_refined")},
        "persistence_1": r4(rows["persistence"]["1"]),
        "persistence_8": r4(rows["persistence"]["8"]),
        "tokenizer_ceiling_1": r4(rows["tokenizer_ceiling"]["1"]),
        "tokenizer_ceiling_8": r4(rows["tokenizer_ceiling"]["8"]),
        "latent_ceiling_1": r4(rows["latent_ceiling"]["1"]),
        "latent_ceiling_8": r4(rows["latent_ceiling"]["8"]),
        "clock": args.clock,
        "train_seconds": args.train_seconds,
        "train": train_info,
        "refine_seconds": round(refine_seconds, 1),
        "n_windows": n_windows,
        "resolution": args.resolution,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""Probing and steering a concept the model had to infer: Navier–Stokes viscosity swept over a
decade.

Two visually distinct regimes are too easy (a probe on a histogram of the tokenizer's codes
separates them), so the regime parameter is sampled continuously: ``navier_stokes2d`` with ν
log-uniform over a decade (16 values, ``--nu``), every value the same initial conditions, whole
trajectories held out. Pipeline, each stage small enough for a few minutes on 2 cores: simulate
(32², ``--n-traj`` trajectories of ``--n-steps`` frames per ν, split 4/3/3) → shard (1 + 4 frame
windows: the loss covers 4 of 5 frames, four times the supervision of 4 + 1 windows for the same
compute) → tokenizer (``--tokenizer-config``, by default configs/tokenizer/tiny_conditional.yaml as
in the quickstart; FSQ ``--levels``, ``--tokenizer-steps``) → token shards → AR pretraining (4
layers, d 64, 8×8 tokens per frame, batch 8, ``--steps``) → ``physfm probe`` on the valid + test
windows, which the model never trained on (5-fold CV over trajectories; baselines: the window's code
histogram and the embedding layer) → ``physfm steer direction`` (top vs bottom quarter of ν, train
windows, at the probe's best layer) → ``physfm steer rollout`` over ``--alphas`` (test contexts of
one frame, ``--horizon`` generated, greedy).

    python bench/steering.py [--steps 1000] [--alphas -1,-0.5,-0.25,0,0.25,0.5,1] [--workdir DIR] [--seed 0]

Last line: JSON with probe_r2 (best layer), probe_r2_code_histogram, probe_r2_embedding,
spearman_probe (ρ between α and the probe's ν on the steered rollouts), spearman_physics (ρ between
α and the generated fields' enstrophy), and more. Targets: probe_r2 >= 0.8 above both baselines;
|spearman_probe| >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def build_model(work: Path, args, log) -> dict[str, Path]:
    """simulate → shard → tokenizer → tokens → AR model; each stage reused when its output
    exists."""
    from data_pipelines.config import load_config
    from data_pipelines.sharding import WindowSpec, shard_datasets
    from data_pipelines.simulators import parse_sweep, simulate_dataset
    from physfm.train.pretrain import load_pretrain_config, run_pretrain
    from tokenizer.encode import encode_shards
    from tokenizer.training import TokenizerTrainConfig, train_tokenizer

    data, shards, tok_run, tokens, ar = (
        work / n for n in ("data", "shards", "tokenizer", "tokens", "ar")
    )
    if not (data / "stats.yaml").exists():
        with log("simulate"):
            simulate_dataset(
                "navier_stokes2d",
                data,
                n_traj=args.n_traj,
                n_steps=args.n_steps,
                resolution=32,
                params={"nu": parse_sweep(args.nu)},
                seed=args.seed,
                overwrite=True,
                split_fractions=(4, 3, 3),
            )
    if not (shards / "manifest.json").exists():
        with log("shard"):
            shard_datasets([data], shards, WindowSpec(1, 4, 1), workers=1, overwrite=True)
    if not (tok_run / "checkpoint").exists():
        with log("tokenizer"):
            cfg = load_config(
                TokenizerTrainConfig,
                ROOT / "configs/tokenizer" / args.tokenizer_config,
                [
                    f"data.shards={shards}",
                    f"out={tok_run}",
                    f"seed={args.seed}",
                    f"model.levels={args.levels}",
                    "trainer.max_time_s=0",
                    f"trainer.max_steps={args.tokenizer_steps}",
                    "trainer.wandb=false",
                    f"trainer.num_threads={args.threads}",
                    "data.val_batches=0",
                    "trainer.log_every=100",
                    "trainer.verbose=false",
                ],
            )
            train_tokenizer(cfg)
    if not (tokens / "manifest.json").exists():
        with log("encode"):
            encode_shards(tok_run / "checkpoint", shards, tokens, batch_size=32)
    if not (ar / "metrics.json").exists():
        with log("pretrain"):
            vocab = math.prod(json.loads(args.levels))
            cfg = load_pretrain_config(
                str(ROOT / "configs/pretrain/tiny.yaml"),
                [
                    f"data.tokens=[{tokens}]",
                    f"out={ar}",
                    f"tokenizer={tok_run / 'checkpoint'}",
                    f"seed={args.seed}",
                    f"model.vocab_size={vocab}",
                    f"model.fsq_levels={args.levels}",
                    "model.d_model=64",
                    "model.ffn_hidden=192",
                    "model.n_layer=4",
                    "model.grid_shape=[8,8]",
                    "model.n_spatial_dims=2",
                    f"trainer.max_steps={args.steps}",
                    "trainer.logger=csv",
                    "trainer.progress_bar=false",
                    "trainer.val_every=0",
                    "trainer.log_every=50",
                    f"trainer.checkpoint_every={args.steps}",
                    "data.num_workers=0",
                    "data.batch_size=8",
                    "data.val_batches=0",
                    "optim.lr=3e-3",
                    "optim.warmup_steps=20",
                ],
            )
            run_pretrain(cfg)
    return {"shards": shards, "tokens": tokens, "ar": ar}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--nu",
        default="log:2e-3:2e-2:16",
        help="viscosity sweep (default: 16 values over a decade)",
    )
    p.add_argument("--n-traj", type=int, default=10, help="trajectories per ν (split 4/3/3)")
    p.add_argument("--n-steps", type=int, default=24, help="frames per trajectory")
    p.add_argument(
        "--levels", default="[8,5,5,5]", help="tokenizer FSQ levels (default: 1000 codes)"
    )
    p.add_argument(
        "--tokenizer-config",
        default="tiny_conditional.yaml",
        help="a file of configs/tokenizer/ (default: tiny_conditional.yaml, the quickstart's: frames after the "
        "first coded as changes; tiny.yaml codes every frame on its own)",
    )
    p.add_argument(
        "--tokenizer-steps",
        type=int,
        default=800,
        help="tokenizer training steps (a step count, not a "
        "time budget, so the bench does not depend on the machine's speed)",
    )
    p.add_argument("--steps", type=int, default=1000, help="AR pretraining steps (batch 8)")
    p.add_argument("--alphas", default="-1,-0.5,-0.25,0,0.25,0.5,1")
    p.add_argument(
        "--horizon", type=int, default=5, help="generated token frames per steered rollout"
    )
    p.add_argument("--windows", type=int, default=8, help="test contexts rolled out per α")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on a shared 2-core machine)",
    )
    p.add_argument(
        "--workdir", default=None, help="keep data and runs here (stages reused when present)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-steering-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    class log:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            print(f"[{self.name}] ...", flush=True)
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            seconds[self.name] = round(time.perf_counter() - self.t0, 1)
            print(f"[{self.name}] {seconds[self.name]:.0f} s", flush=True)

    from data_pipelines.simulators import parse_sweep
    from physfm.interp.probe import run_probe
    from physfm.interp.steer import compute_direction
    from physfm.interp.steer_rollout import parse_alphas, steer_rollout

    paths = build_model(work, args, log)
    with log("probe"):
        probe = run_probe(
            paths["ar"], paths["tokens"], "nu", work / "probe", split="valid,test", seed=args.seed
        )
    nus = np.array(parse_sweep(args.nu))
    lo, hi = np.quantile(nus, 0.25), np.quantile(nus, 0.75)
    feature, control = f"nu>={hi:.6g}", f"nu<={lo:.6g}"
    layer = probe["best_layer"]
    with log("direction"):
        direction = compute_direction(
            paths["ar"],
            paths["tokens"],
            feature,
            control,
            [layer],
            work / "nu_direction.safetensors",
            split="train",
            max_windows=128,
            seed=args.seed,
        )
    alphas = parse_alphas(args.alphas)
    with log("steer rollout"):
        steered = steer_rollout(
            paths["ar"],
            paths["tokens"],
            work / "nu_direction.safetensors",
            alphas,
            work / "steer",
            horizon=args.horizon,
            max_windows=args.windows,
            probe=str(work / "probe"),
            seed=args.seed,
        )

    print(
        f"\nprobe of log ν ({probe['n_windows']} windows, {probe['n_groups']} held-out trajectories, "
        f"ν ∈ [{nus.min():.3g}, {nus.max():.3g}], {len(nus)} values)"
    )
    print(f"{'features':<26} {'R²':>7} {'regime acc.':>12}")
    for point, v in probe["layers"].items():
        print(
            f"{point + (' (best)' if point == layer else ''):<26} {v['r2']:>7.3f} {v['accuracy']:>12.3f}"
        )
    print(
        f"{'code histogram (baseline)':<26} {probe['probe_r2_code_histogram']:>7.3f} "
        f"{probe['probe_accuracy_code_histogram']:>12.3f}"
    )
    print(
        f"\nsteering at {layer} along ({feature}) − ({control}), {steered['n_windows']} test contexts, "
        f"{args.horizon} generated frames"
    )
    names = list(steered["curves"])
    print(f"{'α':>6} " + " ".join(f"{n:>22}" for n in names))
    for i, a in enumerate(alphas):
        print(f"{a:>6g} " + " ".join(f"{steered['curves'][n]['mean'][i]:>22.4g}" for n in names))
    print(f"{'ρ':>6} " + " ".join(f"{steered['curves'][n]['spearman']:>22.3f}" for n in names))
    loss = json.loads((paths["ar"] / "metrics.json").read_text()).get("loss_history") or [
        [0, float("nan")]
    ]
    result = {
        "probe_r2": probe["probe_r2"],
        "probe_r2_code_histogram": probe["probe_r2_code_histogram"],
        "probe_r2_embedding": probe["probe_r2_embedding"],
        "spearman_probe": round(steered["spearman_probe"], 3),
        "spearman_physics": round(steered["spearman_physics"], 3),
        "physics_statistic": steered["physics_statistic"],
        "spearman_spectrum_slope": round(
            steered["curves"].get("energy_spectrum_slope", {}).get("spearman", float("nan")), 3
        ),
        "best_layer": layer,
        "probe_r2_per_layer": {k: v["r2"] for k, v in probe["layers"].items()},
        "probe_accuracy": probe["probe_accuracy"],
        "alpha0_identical": steered["alpha0_identical"],
        "alphas": alphas,
        "probe_nu_per_alpha": [round(v, 6) for v in steered["curves"]["probe nu"]["mean"]],
        "direction_counts": direction["counts"],
        "final_train_loss": round(loss[-1][1], 3),
        "n_windows_probe": probe["n_windows"],
        "seconds": seconds,
        "sizes": {
            "nu": args.nu,
            "n_traj": args.n_traj,
            "n_steps": args.n_steps,
            "resolution": 32,
            "levels": args.levels,
            "tokenizer_steps": args.tokenizer_steps,
            "tokenizer_config": args.tokenizer_config,
            "steps": args.steps,
            "horizon": args.horizon,
            "windows": args.windows,
        },
        "seed": args.seed,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
    }
    targets = (
        result["probe_r2"] >= 0.8
        and result["probe_r2"] > result["probe_r2_code_histogram"]
        and result["probe_r2"] > result["probe_r2_embedding"],
        abs(result["spearman_probe"]) >= 0.9,
    )
    print(
        f"\ntargets: best-layer R² >= 0.8 above both baselines: {targets[0]}; |ρ probe| >= 0.9: {targets[1]}; "
        f"physics ({result['physics_statistic']}) ρ = {result['spearman_physics']}; stage seconds {seconds}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""Does fine-tuning a pretrained model beat training from scratch on a held-out simulation?

Pretrain (tokenizer + tiny AR model) on gray_scott2d + navier_stokes2d, leave wave2d out; fine-tune
on wave2d (new fields: pressure, velocity; its own stem/head on the frozen tokenizer trunk) for S
steps; train the same architecture from random init (same adapted tokenizer) for S steps (equal
optimizer steps) and for as many steps as fit in the fine-tune's wall-clock (tokenizer adaptation +
fine-tune; equal wall-clock). Scores: VRMSE on wave2d's test windows at the next step and 8 steps
ahead (greedy rollout), mean over fields. The pretraining cost itself is not charged to the
fine-tune (it is amortised over tasks).

Runs with no arguments in about 16 minutes on an idle 2-core CPU (half of it pretraining);
``--steps``, ``--pretrain-steps``, ``--n-traj``, ``--resolution`` scale it. The sizes matter: with a
few trajectories per system both models memorise their training windows (train loss → 0.01) and
neither generalises. Prints a table, then one JSON line.
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

MODEL = [
    "model.n_layer=3",
    "model.d_model=128",
    "model.n_head=4",
    "model.n_kv_head=2",
    "model.ffn_hidden=384",
    "model.vocab_size=1000",
    "model.max_frames=5",
]
COMMON = [
    "trainer.logger=csv",
    "trainer.progress_bar=false",
    "data.num_workers=0",
    "data.batch_size=8",
    "data.val_batches=0",
    "trainer.val_every=0",
    "trainer.peak_tflops=1",
]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steps", type=int, default=1000, help="fine-tune (and scratch) optimizer steps"
    )
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--tokenizer-steps", type=int, default=2000, help="pretraining tokenizer steps")
    p.add_argument(
        "--adapt-steps",
        type=int,
        default=600,
        help="tokenizer adaptation steps for the held-out system (new stem/head, frozen trunk)",
    )
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument(
        "--n-traj",
        type=int,
        default=16,
        help="trajectories per parameter value, pretraining systems",
    )
    p.add_argument(
        "--n-traj-new",
        type=int,
        default=8,
        help="trajectories per parameter value, held-out system",
    )
    p.add_argument("--n-steps", type=int, default=48, help="time steps per trajectory")
    p.add_argument("--eval-windows", type=int, default=48, help="test windows scored per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None, help="keep the runs here (default: a temporary directory)"
    )
    p.add_argument(
        "--reuse-pretrain",
        action="store_true",
        help="with --out: keep the data and pretrained model already there (e.g. to vary --steps)",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-finetune-"))
    t0 = time.perf_counter()
    if args.reuse_pretrain and (root / "pretrain" / "run.json").exists():
        import shutil

        pre = root / "pretrain"
        shutil.rmtree(root / "finetune", ignore_errors=True)
    else:
        pre = pretrain(root, args)
    pretrain_s = time.perf_counter() - t0
    result = finetune_and_compare(root, pre, args)
    result.update(
        {
            "pretrain_seconds": round(pretrain_s, 1),
            "machine": f"{platform.platform()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}",
            "sizes": {
                "resolution": args.resolution,
                "n_traj": args.n_traj,
                "n_traj_new": args.n_traj_new,
                "n_steps": args.n_steps,
                "steps": args.steps,
                "pretrain_steps": args.pretrain_steps,
                "tokenizer_steps": args.tokenizer_steps,
                "adapt_steps": args.adapt_steps,
            },
            "seed": args.seed,
        }
    )
    print_table(result)
    print(json.dumps(result))
    return result


def pretrain(root: Path, args) -> Path:
    from data_pipelines.config import load_config
    from data_pipelines.sharding import WindowSpec, shard_datasets
    from data_pipelines.simulators import simulate_dataset
    from physfm.train.pretrain import load_pretrain_config, run_pretrain
    from tokenizer.encode import encode_shards
    from tokenizer.training import TokenizerTrainConfig, train_tokenizer

    dirs = [
        simulate_dataset(
            s,
            root / "data" / s,
            n_traj=args.n_traj,
            n_steps=args.n_steps,
            resolution=args.resolution,
            seed=args.seed,
            overwrite=True,
        )
        for s in ("gray_scott2d", "navier_stokes2d")
    ]
    simulate_dataset(
        "wave2d",
        root / "data" / "wave2d",
        n_traj=args.n_traj_new,
        n_steps=args.n_steps,
        resolution=args.resolution,
        seed=args.seed + 1,
        overwrite=True,
    )
    shards = root / "shards"
    shard_datasets(dirs, shards, WindowSpec(4, 1, 1), overwrite=True)
    tcfg = load_config(
        TokenizerTrainConfig,
        "configs/tokenizer/tiny.yaml",
        [
            f"data.shards={shards}",
            f"out={root / 'tokenizer'}",
            f"trainer.max_steps={args.tokenizer_steps}",
            "trainer.wandb=false",
            "trainer.verbose=false",
            "data.val_batches=0",
            f"seed={args.seed}",
        ],
    )
    tok = train_tokenizer(tcfg)
    tokens = encode_shards(tok, shards, root / "tokens")
    grid = args.resolution // 4
    cfg = load_pretrain_config(
        "configs/pretrain/tiny.yaml",
        MODEL
        + COMMON
        + [
            f"model.grid_shape=[{grid},{grid}]",
            f"data.tokens=[{tokens}]",
            f"tokenizer={tok}",
            f"out={root / 'pretrain'}",
            f"trainer.max_steps={args.pretrain_steps}",
            "trainer.checkpoint_every=1000",
            f"seed={args.seed}",
        ],
    )
    return run_pretrain(cfg)


def finetune_and_compare(root: Path, pre: Path, args) -> dict:
    from physfm.core.run_info import RunInfo
    from physfm.train.finetune import (
        _training_config,
        export_plain,
        load_finetune_config,
        run_finetune,
    )
    from physfm.train.finetune_eval import evaluate_models
    from physfm.train.pretrain import run_pretrain

    overrides = COMMON + [
        f"finetune.init={pre}",
        f"finetune.data={root / 'data' / 'wave2d'}",
        f"out={root / 'finetune'}",
        f"trainer.max_steps={args.steps}",
        "trainer.checkpoint_every=1000",
        "finetune.compare_scratch=true",
        f"finetune.tokenizer_steps={args.adapt_steps}",
        "finetune.eval_horizons=[1,8]",
        f"finetune.eval_max_windows={args.eval_windows}",
        f"seed={args.seed}",
    ]
    cfg = load_finetune_config("configs/finetune/tiny.yaml", overrides)
    out = run_finetune(cfg)
    m = json.loads((out / "metrics.json").read_text())
    seconds = m["seconds"]
    finetune_wall = seconds["tokenizer_s"] + seconds["finetune_s"]
    per_step = max(m["scratch_train"]["seconds"], 1e-3) / max(m["scratch_train"]["steps"], 1)
    wall_steps = max(1, round(finetune_wall / per_step))
    # Equal wall-clock: scratch gets the fine-tune's whole time (tokenizer adaptation included) as
    # AR steps.
    cfg_wall = _training_config(
        cfg,
        RunInfo.read(pre).model,
        Path(m["tokenizer"]),
        out / "tokens",
        out / "scratch_wallclock",
        max_steps=wall_steps,
    )
    cfg_wall.trainer.checkpoint_every = wall_steps
    start = time.perf_counter()
    run_pretrain(cfg_wall, init_weights={"dataset_names": m["dataset_names"]})
    wall_s = time.perf_counter() - start
    wall = evaluate_models(
        {
            "scratch_wallclock": export_plain(
                out / "scratch_wallclock", out / "scratch_wallclock" / "model", None
            )
        },
        Path(m["shards"]),
        m["datasets"],
        [1, 8],
        args.eval_windows,
    )
    o, w = m["overall"], wall["overall"]
    return {
        "finetuned_1": round(o["finetuned"]["1"], 4),
        "finetuned_8": round(o["finetuned"]["8"], 4),
        "scratch_1": round(o["scratch"]["1"], 4),
        "scratch_8": round(o["scratch"]["8"], 4),
        "scratch_wallclock_1": round(w["scratch_wallclock"]["1"], 4),
        "scratch_wallclock_8": round(w["scratch_wallclock"]["8"], 4),
        "pretrained_before_1": round(o["pretrained"]["1"], 4),
        "pretrained_before_8": round(o["pretrained"]["8"], 4),
        "persistence_1": round(o["persistence"]["1"], 4),
        "persistence_8": round(o["persistence"]["8"], 4),
        "tokenizer_ceiling_1": round(o["tokenizer_ceiling"]["1"], 4),
        "tokenizer_ceiling_8": round(o["tokenizer_ceiling"]["8"], 4),
        "ratio_scratch_over_finetuned_1": round(o["scratch"]["1"] / o["finetuned"]["1"], 3),
        "ratio_scratch_over_finetuned_8": round(o["scratch"]["8"] / o["finetuned"]["8"], 3),
        "finetune_steps": m["steps"],
        "scratch_wallclock_steps": wall_steps,
        "finetune_wall_seconds": round(finetune_wall, 1),
        "scratch_wallclock_seconds": round(wall_s, 1),
        "test_windows": m["n_windows"],
        "held_out": "wave2d",
        "pretrained_on": ["gray_scott2d", "navier_stokes2d"],
    }


def print_table(r: dict) -> None:
    print(
        f"\nheld out: {r['held_out']} (pretrained on {', '.join(r['pretrained_on'])}); VRMSE on test windows"
    )
    print(f"{'model':<44}{'next step':>10}{'8 steps':>10}")
    rows = [
        (f"pretrained + fine-tuned ({r['finetune_steps']} steps)", "finetuned"),
        ("scratch, equal steps", "scratch"),
        (f"scratch, equal wall-clock ({r['scratch_wallclock_steps']} steps)", "scratch_wallclock"),
        ("pretrained, before AR fine-tuning", "pretrained_before"),
        ("persistence", "persistence"),
        ("tokenizer ceiling (true tokens decoded)", "tokenizer_ceiling"),
    ]
    for label, key in rows:
        print(f"{label:<44}{r[key + '_1']:>10.4f}{r[key + '_8']:>10.4f}")
    print(
        f"scratch/fine-tuned VRMSE ratio: next step {r['ratio_scratch_over_finetuned_1']}, "
        f"8 steps {r['ratio_scratch_over_finetuned_8']}  (> 1: fine-tuning wins)\n"
    )


if __name__ == "__main__":
    main()

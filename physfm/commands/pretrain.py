"""``physfm pretrain --config YAML [key=value ...]`` — train the AR physics model (also the sbatch entry)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain the AR model on token shards (any strategy, any launcher)")
    p.add_argument("--config", required=True, metavar="YAML", help="e.g. configs/pretrain/tiny.yaml")
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory (same as out=...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. trainer.max_steps=20")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm.pretrain import load_pretrain_config, run_pretrain
    from physfm.training import TrainingStopped

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    cfg = load_pretrain_config(args.config, overrides)
    try:
        out = run_pretrain(cfg)
    except TrainingStopped as stopped:  # a signal asked for a checkpoint and an early exit
        return finish(stopped.out, stopped.exit_code, note=str(stopped))
    return finish(out)


def finish(out, code: int = 0, note: str = "") -> int:
    """Print where the run went; in a multi-process launch, exit the worker cleanly (gloo's exit race).
    ``code`` 75 (TrainingStopped) means: stopped early with a checkpoint, run again to continue."""
    from physfm.distributed import clean_exit, is_rank_zero, world_size

    if is_rank_zero():
        if note:
            print(f"physfm: {note}")
        print(f"run directory: {out} (metrics.json, report.md, checkpoints/)")
    if world_size() > 1:
        clean_exit(code)
    return code

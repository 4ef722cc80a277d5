"""``physfm finetune [--config YAML] --ckpt CKPT --data DIR_OR_SHARDS [key=value ...]`` (also the
sbatch entry)."""

from __future__ import annotations

import argparse
from pathlib import Path

# the repository's configs/, wherever the command runs from
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "recipe.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained model on a new simulation (new fields, "
        "resolution, 1D, 2D or 3D: a tokenizer of fewer axes is inflated): tokenizer adaptation, "
        "full/freeze/LoRA, before/after report",
    )
    p.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        metavar="YAML",
        help="default: configs/finetune/recipe.yaml, the measured recipe (per-part learning rates, "
        "frozen trunk warm-up, early stopping, keep the better of fine-tuned and zero-shot)",
    )
    p.add_argument(
        "--ckpt",
        "--from",  # the flag's former name, still accepted
        dest="init",
        required=True,
        metavar="CKPT",
        help="pretrained model: run directory, checkpoint or export (--from is an alias)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR_OR_SHARDS",
        help="raw The Well dataset directory (sharded into the run) or a field shard directory",
    )
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory (same as out=...)")
    p.add_argument(
        "--compare-scratch",
        action="store_true",
        help="also train the same budget from random init and compare",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. trainer.max_steps=20",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipelines.errors import PhysfmError
    from physfm.cli.pretrain import fail, finish
    from physfm.train.finetune import load_finetune_config, run_finetune
    from physfm.train.module import NonFiniteLoss, TrainingStopped

    overrides = list(args.overrides) + [f"finetune.init={args.init}", f"finetune.data={args.data}"]
    overrides += [f"out={args.out}"] if args.out else []
    overrides += ["finetune.compare_scratch=true"] if args.compare_scratch else []
    cfg = load_finetune_config(args.config, overrides)
    try:
        out = run_finetune(cfg)
    # a signal asked for a checkpoint and an early exit (Slurm requeues on 75)
    except TrainingStopped as stopped:
        return finish(stopped.out, stopped.exit_code, note=str(stopped))
    # one line, also from a worker of a multi-process launch (clean_exit)
    except PhysfmError as err:
        return fail(err, "finetune")
    except NonFiniteLoss as err:
        return fail(err, "finetune", code=1)
    return finish(out)

"""``physfm pretrain --config YAML [key=value ...]`` — train the AR physics model (also the sbatch
entry)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain the AR model on token shards (or, with model.kind=diffusion, "
        "the flow-matching model on field shards); any strategy, any launcher",
    )
    p.add_argument(
        "--config", required=True, metavar="YAML", help="e.g. configs/pretrain/tiny.yaml"
    )
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory (same as out=...)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. trainer.max_steps=20",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm.train.pretrain import load_pretrain_config, run_pretrain

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    # before Lightning is imported: a bad key fails at once
    cfg = load_pretrain_config(args.config, overrides)
    from data_pipelines.errors import PhysfmError
    from physfm.train.module import NonFiniteLoss, TrainingStopped

    try:
        out = run_pretrain(cfg)
    except TrainingStopped as stopped:  # a signal asked for a checkpoint and an early exit
        return finish(stopped.out, stopped.exit_code, note=str(stopped))
    except PhysfmError as err:
        # A refused or unwritable checkpoint, bad data: one line and exit 2 — also from a worker of
        # a multi-process launch, which must leave through clean_exit.
        return fail(err, "pretrain")
    # the run diverged: not the user's input, so exit 1 (2 means bad input)
    except NonFiniteLoss as err:
        return fail(err, "pretrain", code=1)
    return finish(out)


def fail(err: Exception, verb: str, code: int | None = None) -> int:
    """Print ``err`` as one line (naming the rank in a multi-process launch, where it may be the
    only one that saw it) and exit with ``code`` (default: 2, the CLI's code for the user's input or
    environment)."""
    import sys

    from physfm.cli.main import USER_ERROR_EXIT_CODE, one_line
    from physfm.train.distributed import clean_exit, global_rank, world_size

    code = USER_ERROR_EXIT_CODE if code is None else code
    where = f" (rank {global_rank()})" if world_size() > 1 else ""
    # one write: ranks' lines do not interleave
    sys.stderr.write(f"physfm {verb}: error{where}: {one_line(err)}\n")
    sys.stderr.flush()
    if world_size() > 1:
        clean_exit(code)
    return code


def finish(out, code: int = 0, note: str = "") -> int:
    """Print where the run went; in a multi-process launch, exit the worker cleanly (gloo's exit
    race). ``code`` 75 (TrainingStopped) means: stopped early with a checkpoint, run again to
    continue."""
    from physfm.train.distributed import clean_exit, is_rank_zero, world_size

    if is_rank_zero():
        if note:
            print(f"physfm: {note}")
        print(f"run directory: {out} (metrics.json, report.md, checkpoints/)")
    if world_size() > 1:
        clean_exit(code)
    return code

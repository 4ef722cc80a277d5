"""``physfm rollout --ckpt CKPT --data SHARDS --horizon H --out DIR`` — autoregressive rollouts to files."""

from __future__ import annotations

import argparse

from physfm.cli.args import add_split_argument


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by rollout and evaluate."""
    p.add_argument("--ckpt", required=True, help="pretrain run directory, checkpoint, or export directory")
    p.add_argument("--data", required=True, metavar="SHARDS", help="field shards (physfm data shard --out)")
    add_split_argument(p, "test", single=True)
    p.add_argument(
        "--max-windows",
        type=int,
        default=None,
        metavar="N",
        help="windows per dataset, spread evenly over the split (default: all)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="windows rolled out together (default: 32)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the one the run names)")
    p.add_argument("--refiner", default=None, metavar="DIR", help="refiner directory (default: CKPT/refiner if any)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--sampling-steps",
        type=int,
        default=None,
        metavar="N",
        help="diffusion checkpoints: ODE steps per frame (default: the run's diffusion.sampling_steps)",
    )
    p.add_argument(
        "--sampler",
        choices=("euler", "heun"),
        default=None,
        help="diffusion checkpoints: ODE solver (default: the run's diffusion.sampler)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rollout", help="roll a model out H frames on held-out windows; predictions + PNGs")
    add_model_args(p)
    p.add_argument("--horizon", type=int, required=True, metavar="H", help="frames to predict after the context")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--refine",
        action="store_true",
        default=None,
        help="require the refiner (default: each predicted frame is refined when the model has one)",
    )
    group.add_argument("--no-refine", dest="refine", action="store_false", help="raw predictions, no refiner")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: runs/rollout-<time>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm.eval.evaluate import rollout_to_files
    from physfm.train.config import default_run_dir

    out = args.out or default_run_dir("rollout")
    metrics = rollout_to_files(
        args.ckpt,
        args.data,
        args.horizon,
        out,
        split=args.split[0],
        max_windows=args.max_windows,
        batch_size=args.batch_size,
        refine=args.refine,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        tokenizer=args.tokenizer,
        refiner=args.refiner,
        device=args.device,
        sampling_steps=args.sampling_steps,
        sampler=args.sampler,
    )
    n = sum(metrics["n_windows"].values())
    print(f"rolled out {n} windows × {args.horizon} frames → {out} (predictions/, metrics.json, report.md, PNGs)")
    return 0

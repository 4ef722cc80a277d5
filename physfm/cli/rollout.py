"""``physfm rollout --ckpt CKPT --data SHARDS --horizon H --out DIR`` — autoregressive rollouts to
files."""

from __future__ import annotations

import argparse

from physfm.cli.args import add_split_argument, positive_int
from physfm.inference.sampling import Sampling


def add_model_args(p: argparse.ArgumentParser, refine_help: str) -> None:
    """Flags shared by rollout and evaluate (``refine_help``: what the default without
    --refine/--no-refine is)."""
    p.add_argument(
        "--ckpt", required=True, help="pretrain run directory, checkpoint, or export directory"
    )
    p.add_argument(
        "--data", required=True, metavar="SHARDS", help="field shards (physfm data shard --out)"
    )
    add_split_argument(p, "test", single=True)
    p.add_argument(
        "--max-windows",
        type=positive_int,
        default=None,
        metavar="N",
        help="windows per dataset, spread evenly over the split (default: all)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        help="windows rolled out together (default: 32)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument(
        "--top-k", type=positive_int, default=None, help="sample among the k likeliest tokens"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (temperature > 0)")
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer checkpoint (default: the one the run names)"
    )
    p.add_argument(
        "--refiner",
        default=None,
        metavar="DIR",
        help="refiner directory (default: CKPT/refiner if any)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="AR models: the transformer's weights and activations (default: float32); bfloat16 is ~2.7x "
        "faster on CPUs with AMX and on GPUs, and rounds a few logits differently",
    )
    p.add_argument(
        "--sampling-steps",
        type=positive_int,
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
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--refine", action="store_true", default=None, help=f"require the refiner ({refine_help})"
    )
    group.add_argument(
        "--no-refine", dest="refine", action="store_false", help="raw predictions, no refiner"
    )


def model_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``evaluate``/``rollout_to_files`` that come from
    :func:`add_model_args`."""
    names = ("max_windows", "batch_size", "refine", "seed", "tokenizer", "device")
    sampling = Sampling.from_options(
        temperature=args.temperature,
        top_k=args.top_k,
        refiner=args.refiner or "auto",
        dtype=args.dtype,
        sampling_steps=args.sampling_steps,
        sampler=args.sampler,
    )
    return {
        "split": args.split[0],
        "sampling": sampling,
        **{name: getattr(args, name) for name in names},
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rollout", help="roll a model out H frames on held-out windows; predictions + PNGs"
    )
    add_model_args(
        p,
        "default: frames are refined when the model has a refiner that helped on held-out windows",
    )
    p.add_argument(
        "--horizon",
        type=positive_int,
        required=True,
        metavar="H",
        help="frames to predict after the context",
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="output directory (default: runs/rollout-<time>)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm.eval.evaluate import rollout_to_files
    from physfm.train.config import default_run_dir

    out = args.out or default_run_dir("rollout")
    metrics = rollout_to_files(args.ckpt, args.data, args.horizon, out, **model_kwargs(args))
    n = sum(metrics["n_windows"].values())
    print(
        f"rolled out {n} windows × {args.horizon} frames → {out} (predictions/, metrics.json, report.md, PNGs)"
    )
    return 0

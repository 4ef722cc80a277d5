"""``physfm refine --ckpt AR_RUN --data SHARDS [--out DIR] [key=value ...]`` — fit the refinement
U-Net."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "refine", help="fit the refinement U-Net to a trained AR model (PhysiX)"
    )
    p.add_argument(
        "--ckpt", required=True, help="the AR model: pretrain run, checkpoint or export directory"
    )
    p.add_argument(
        "--data", required=True, metavar="SHARDS", help="field shards the model was trained on"
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="default: CKPT/refiner (found by rollout/evaluate)",
    )
    p.add_argument(
        "--config", default=None, metavar="YAML", help="optional config (keys as the overrides)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="e.g. train.steps=300 model.width=16 data.n_windows=128",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm.train.refine import load_refine_config, run_refine

    overrides = [
        f"ckpt={args.ckpt}",
        f"data.shards={args.data}",
        *([f"out={args.out}"] if args.out else []),
        *args.overrides,
    ]
    cfg = load_refine_config(args.config, overrides)
    out = run_refine(cfg)
    print(f"refiner → {out} (refiner.safetensors, refiner.json, metrics.json, report.md)")
    return 0

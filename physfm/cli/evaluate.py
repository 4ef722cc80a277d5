"""``physfm evaluate --ckpt CKPT --data SHARDS --horizons 1,4,8 --out DIR`` — VRMSE beside the
baselines."""

from __future__ import annotations

import argparse

from physfm.cli.rollout import add_model_args, model_kwargs


def horizons(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--horizons {text!r}: expected comma-separated integers, e.g. 1,4,8"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--horizons {text!r}: need positive integers")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="VRMSE per dataset, field and horizon, with persistence, "
        "copy-tokens and tokenizer-ceiling baselines; metrics.json, report.md, PNGs",
    )
    add_model_args(p, "default: scored with and without it when the model has one")
    p.add_argument(
        "--horizons", type=horizons, default=[1, 4, 8], help="comma-separated (default: 1,4,8)"
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory (default: runs/evaluate-<time>)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm.eval.evaluate import evaluate
    from physfm.train.config import default_run_dir

    out = args.out or default_run_dir("evaluate")
    metrics = evaluate(args.ckpt, args.data, args.horizons, out, **model_kwargs(args))
    overall = metrics["overall"]
    print(
        "mean VRMSE (1.0 = spatial mean)   " + "  ".join(f"h={h:<4}" for h in metrics["horizons"])
    )
    for method, per in overall.items():
        print(f"  {method:<32}" + "  ".join(f"{per[str(h)]:.3f} " for h in metrics["horizons"]))
    print(f"→ {out} (metrics.json, report.md, PNGs)")
    return 0

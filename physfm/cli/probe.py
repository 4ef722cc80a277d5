"""``physfm probe --ckpt CKPT --data SHARDS --target PARAM --out DIR`` — linear probes per layer for
a simulation parameter, held-out R² and regime accuracy beside code-histogram and embedding
baselines."""

from __future__ import annotations

import argparse

from physfm.cli.args import add_split_argument, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "probe",
        help="ridge probes per layer for a simulation parameter (held-out R², "
        "regime accuracy, baselines); metrics.json, report.md, r2_per_layer.png",
    )
    p.add_argument(
        "--ckpt", required=True, help="pretrain run directory, checkpoint, or export directory"
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="SHARDS",
        help="token shards (or field shards: encoded on the fly)",
    )
    p.add_argument(
        "--target", required=True, metavar="PARAM", help="simulation parameter to predict, e.g. nu"
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="output directory (default: runs/probe-<time>)"
    )
    add_split_argument(p, "valid,test")
    p.add_argument(
        "--select",
        default=None,
        metavar="EXPR",
        help="only windows matching, e.g. \"dataset=='ns'\"",
    )
    p.add_argument(
        "--points",
        default=None,
        help="comma-separated hook points (default: embedding + every blocks.i.resid)",
    )
    p.add_argument(
        "--scale",
        choices=("auto", "log", "linear"),
        default="auto",
        help="target scale (auto: log when positive and spanning >= 5x)",
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="regime threshold (default: the median)"
    )
    p.add_argument(
        "--group-by",
        choices=("trajectory", "file"),
        default="trajectory",
        help="hold-out unit of the cross-validation (default: trajectory)",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (held-out groups)")
    p.add_argument(
        "--max-windows",
        type=positive_int,
        default=None,
        metavar="N",
        help="windows, spread evenly (default: all)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm.interp.probe import run_probe
    from physfm.train.config import default_run_dir

    out = args.out or default_run_dir("probe")
    points = [p.strip() for p in args.points.split(",")] if args.points else None
    m = run_probe(
        args.ckpt,
        args.data,
        args.target,
        out,
        split=",".join(args.split),
        points=points,
        selection=args.select,
        scale=args.scale,
        threshold=args.threshold,
        group_by=args.group_by,
        n_folds=args.folds,
        max_windows=args.max_windows,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(f"{'features':<24} {'R²':>7} {'accuracy':>9}")
    for point, v in m["layers"].items():
        print(f"{point:<24} {v['r2']:>7.3f} {v['accuracy']:>9.3f}")
    if m["probe_r2_code_histogram"] is not None:
        print(
            f"{'code histogram':<24} {m['probe_r2_code_histogram']:>7.3f} {m['probe_accuracy_code_histogram']:>9.3f}"
        )
    print(
        f"best layer {m['best_layer']} (R² {m['probe_r2']:.3f}); {m['n_windows']} windows → {out} "
        "(metrics.json, report.md, r2_per_layer.png, probe.safetensors)"
    )
    return 0

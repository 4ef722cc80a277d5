"""``physfm steer direction|rollout`` — concept directions between two regimes, and rollouts steered
along them with a measured dose–response."""

from __future__ import annotations

import argparse

from physfm.cli.args import add_split_argument, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "steer",
        help="concept directions (direction) and steered rollouts with a dose-response (rollout)",
    )
    verbs = parser.add_subparsers(dest="steer_verb", metavar="ACTION")
    verbs.required = True
    _add_direction_parser(verbs)
    _add_rollout_parser(verbs)


def _add_direction_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "direction", help="Δ = mean(feature) − mean(control) of z-scored activations per layer"
    )
    p.add_argument(
        "--ckpt", required=True, help="pretrain run directory, checkpoint, or export directory"
    )
    p.add_argument("--data", required=True, metavar="SHARDS", help="token shards (or field shards)")
    p.add_argument(
        "--feature", required=True, metavar="EXPR", help='windows of the concept, e.g. "nu>=0.01"'
    )
    p.add_argument(
        "--control", required=True, metavar="EXPR", help='windows without it, e.g. "nu<0.003"'
    )
    p.add_argument(
        "--layer",
        action="append",
        required=True,
        metavar="L",
        help="block index (its residual stream) or a hook point name; repeatable",
    )
    p.add_argument(
        "--method",
        choices=("mean-diff", "pca"),
        default="mean-diff",
        help="mean-diff: Δ of the regime means (default); pca: first principal axis of paired differences",
    )
    add_split_argument(p, "train")
    p.add_argument(
        "--max-windows",
        type=positive_int,
        default=256,
        metavar="N",
        help="per selection, spread evenly",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the pairing of feature and control windows (--method pca)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="direction file (.safetensors; FILE.json beside)",
    )
    p.set_defaults(func=run_direction)


def _add_rollout_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "rollout", help="roll out with the direction added at each α; dose-response curves"
    )
    p.add_argument(
        "--ckpt", required=True, help="pretrain run directory, checkpoint, or export directory"
    )
    p.add_argument(
        "--data", required=True, metavar="SHARDS", help="windows whose context is rolled out"
    )
    p.add_argument(
        "--direction", required=True, metavar="FILE", help="a `physfm steer direction --out` file"
    )
    p.add_argument(
        "--alpha",
        default="-1,-0.5,0,0.5,1",
        help="comma-separated strengths (default: -1,-0.5,0,0.5,1); a list starting with a minus needs "
        "the = form: --alpha=-1,0,1",
    )
    p.add_argument(
        "--spatial-mode",
        choices=("as-is", "mean"),
        default="as-is",
        help="add Δ's spatial map as is, or its spatial mean at every position",
    )
    p.add_argument(
        "--horizon",
        type=positive_int,
        default=None,
        metavar="H",
        help="token frames to generate (default: the model's window length)",
    )
    add_split_argument(p, "test")
    p.add_argument(
        "--select", default=None, metavar="EXPR", help="only contexts matching this selection"
    )
    p.add_argument(
        "--max-windows",
        type=positive_int,
        default=8,
        metavar="N",
        help="contexts, spread evenly (default: 8)",
    )
    p.add_argument(
        "--probe",
        default=None,
        metavar="DIR",
        help="a `physfm probe` output (default: fit one into OUT/probe)",
    )
    p.add_argument(
        "--target",
        default=None,
        metavar="PARAM",
        help="steered parameter (default: from the direction)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the probe fitted when --probe is not given"
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="output directory (default: runs/steer-<time>)"
    )
    p.set_defaults(func=run_rollout)


def layer_points(layers: list[str]) -> list[str]:
    """ "2" → "blocks.2.resid"; hook point names pass through."""
    return [
        f"blocks.{layer}.resid" if layer.strip().isdigit() else layer.strip() for layer in layers
    ]


def run_direction(args: argparse.Namespace) -> int:
    from physfm.interp.steer import compute_direction

    meta = compute_direction(
        args.ckpt,
        args.data,
        args.feature,
        args.control,
        layer_points(args.layer),
        args.out,
        method=args.method,
        split=",".join(args.split),
        max_windows=args.max_windows,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(
        f"direction {args.method} at {', '.join(meta['points'])} from {meta['counts']['feature']} feature and "
        f"{meta['counts']['control']} control windows; norms {meta['norms']} → {args.out} (+ .json)"
    )
    return 0


def run_rollout(args: argparse.Namespace) -> int:
    from physfm.interp.steer_rollout import parse_alphas, steer_rollout
    from physfm.train.config import default_run_dir

    out = args.out or default_run_dir("steer")
    m = steer_rollout(
        args.ckpt,
        args.data,
        args.direction,
        parse_alphas(args.alpha),
        out,
        horizon=args.horizon,
        spatial_mode=args.spatial_mode,
        split=",".join(args.split),
        selection=args.select,
        max_windows=args.max_windows,
        probe=args.probe,
        target=args.target,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    names = list(m["curves"])
    print(f"{'alpha':>6} " + " ".join(f"{n:>22}" for n in names))
    for i, alpha in enumerate(m["alphas"]):
        print(f"{alpha:>6g} " + " ".join(f"{m['curves'][n]['mean'][i]:>22.4g}" for n in names))
    print(f"{'rho':>6} " + " ".join(f"{m['curves'][n]['spearman']:>22.3f}" for n in names))
    print(
        f"α=0 identical to unsteered: {m['alpha0_identical']} → {out} (metrics.json, report.md, dose_response.png)"
    )
    return 0

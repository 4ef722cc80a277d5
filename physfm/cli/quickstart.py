"""``physfm quickstart`` — the whole pipeline on built-in data, on a CPU, with a report."""

from __future__ import annotations

import argparse
import sys

from physfm.quickstart import STAGE_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart", help="run the whole pipeline on built-in data (CPU, minutes)"
    )
    p.add_argument(
        "--out", default="runs/quickstart", metavar="DIR", help="folder for every stage's outputs"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the simulations and every training run"
    )
    p.add_argument(
        "--stages",
        default=None,
        metavar="NAME[,NAME...]",
        help="comma-separated subset of stages to run (default: all), of: "
        + ", ".join(f'"{name}"' if " " in name else name for name in STAGE_NAMES)
        + '; quote a list with spaces, e.g. --stages "shard,loader bench"',
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm.cli import UserError
    from physfm.quickstart.pipeline import STAGES, run_quickstart, view_command

    stages = (
        None if args.stages is None else [n.strip() for n in args.stages.split(",") if n.strip()]
    )
    known = [name for name, _ in STAGES]
    if stages == []:  # an empty list must not read as "all stages"
        raise UserError(f"--stages: no stage named (stages: {', '.join(known)})")
    for name in stages or []:
        if name not in known:
            raise UserError(f"--stages: unknown stage {name!r} (stages: {', '.join(known)})")

    def announce(name: str, i: int, n: int) -> None:
        print(f"[{i + 1}/{n}] {name} ...", file=sys.stderr, flush=True)

    results = run_quickstart(args.out, seed=args.seed, stages=stages, on_stage=announce)
    for name, info in results["stages"].items():
        print(f"{name:>14}: {info['seconds']:6.1f} s")
    print(
        f"total {results['total_seconds']:.1f} s — report: {args.out}/report.md, metrics: {args.out}/metrics.json"
    )
    print(f"look at it in a browser: {view_command(args.out, invoked_as())}")
    return 0


def invoked_as() -> str:
    """How to run physfm again the way it was started (``.venv/bin/physfm`` from ``make
    quickstart``)."""
    import os

    program = sys.argv[0] if sys.argv else ""
    if os.path.basename(program) == "physfm":
        return os.path.relpath(program) if os.path.isabs(program) else program
    return "python -m physfm.cli"

"""``physfm simulate SYSTEM --out DIR`` — run a built-in simulator into a The Well dataset;
``physfm simulate --list`` — the systems, their parameters and default sizes."""

from __future__ import annotations

import argparse
import sys
import time

from physfm.cli.args import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a built-in system into a The Well dataset (train/valid/test + stats.yaml)",
        description="Simulate a built-in system for every combination of parameter values (one HDF5 file "
        "per combination and split) and write DIR/stats.yaml.  Parameters not given keep "
        "their default values; see --list.",
        epilog="examples:\n"
        "  physfm simulate navier_stokes2d --out data/ns\n"
        "  physfm simulate burgers1d --out data/burgers --param-sweep nu=log:0.005:0.05:16\n"
        "  physfm simulate gray_scott2d --out data/gs --param F=0.014 --param k=0.050,0.052,0.054",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument(
        "-h", "--help", action=HelpWithSystems, help="show this help, with every system's defaults"
    )
    p.add_argument("system", nargs="?", metavar="SYSTEM", help="built-in system (see --list)")
    p.add_argument(
        "--list", action="store_true", help="print the systems and their defaults, then exit"
    )
    p.add_argument("--out", metavar="DIR", help="dataset folder to write (required unless --list)")
    p.add_argument(
        "--n-traj",
        type=positive_int,
        default=None,
        help="trajectories per parameter set, split 80/10/10 (default: the system's, see --list)",
    )
    p.add_argument(
        "--n-steps",
        type=positive_int,
        default=None,
        help="saved frames per trajectory (default: the system's)",
    )
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=None,
        help="grid points per spatial dimension (default: the system's)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=V[,V...]",
        help="values of one simulation parameter (repeatable; default: the system's values, see --list)",
    )
    p.add_argument(
        "--param-sweep",
        action="append",
        default=[],
        metavar="NAME=log:LO:HI:N|NAME=lin:LO:HI:N",
        help="N values of one parameter, log- or linearly spaced, ends included (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the initial conditions")
    p.add_argument(
        "--overwrite", action="store_true", help="delete other .hdf5 files already in DIR/data"
    )
    p.set_defaults(func=run)


class HelpWithSystems(argparse.Action):
    """``--help`` that appends the systems table (built only when asked: it imports the simulators,
    and ``physfm --help`` should stay instant)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.epilog = f"{parser.epilog}\n\nbuilt-in systems and their defaults:\n{list_systems()}"
        parser.print_help()
        parser.exit()


def parse_params(param_args: list[str], sweep_args: list[str]) -> dict[str, list[float]]:
    """``["nu=0.01,0.1"]`` and ``["nu=log:1e-3:1e-2:16"]`` → ``{"nu": [...]}``; each name at most
    once."""
    from data_pipelines.simulators import parse_sweep
    from physfm.cli import UserError

    params: dict[str, list[float]] = {}
    for flag, args in (("--param", param_args), ("--param-sweep", sweep_args)):
        for text in args:
            name, sep, value = text.partition("=")
            name = name.strip()
            if not sep or not name or not value:
                raise UserError(f"{flag} {text!r}: expected NAME=VALUE")
            if name in params:
                raise UserError(f"{flag} {text!r}: parameter {name!r} given twice")
            if flag == "--param-sweep":
                params[name] = parse_sweep(value)
                continue
            try:
                params[name] = [float(v) for v in value.split(",")]
            except ValueError:
                raise UserError(
                    f"--param {text!r}: values must be numbers separated by commas"
                ) from None
    return params


def list_systems() -> str:
    """One aligned row per built-in system (dimensions, fields, default size, sweep), its regimes
    below."""
    from data_pipelines.simulators import SIMULATORS

    rows = [("SYSTEM", "DIM", "FIELDS", "DEFAULT SIZE", "SWEEP (cartesian product)")]
    regimes = []
    for spec in SIMULATORS.values():
        grid = "x".join([str(spec.resolution)] * spec.n_spatial_dims)
        size = f"{spec.n_traj} traj x {spec.n_steps} frames x {grid} (dt {spec.dt:g})"
        sweep = "  ".join(
            f"{k}={','.join(f'{v:g}' for v in vals)}" for k, vals in spec.default_params.items()
        )
        rows.append((spec.name, f"{spec.n_spatial_dims}D", ",".join(spec.field_names), size, sweep))
        regimes.append((spec.description, spec.regimes))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    indent = " " * (widths[0] + 2)
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
        if i:
            description, system_regimes = regimes[i - 1]
            lines.append(indent + description)
            lines += [f"{indent}regime: {regime}" for regime in system_regimes]
    lines.append(f"{len(SIMULATORS)} systems; descriptions and methods: docs/systems.md")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from physfm.cli import UserError

    if args.list:
        print(list_systems())
        return 0
    if not args.system:
        raise UserError("SYSTEM is required (see `physfm simulate --list`)")
    if not args.out:
        raise UserError("--out DIR is required")
    from data_pipelines.simulators import get_system, simulate_dataset

    get_system(args.system)  # unknown system → one-line error before any work
    params = parse_params(args.param, args.param_sweep)
    start = time.perf_counter()
    out = simulate_dataset(
        args.system,
        args.out,
        n_traj=args.n_traj,
        n_steps=args.n_steps,
        resolution=args.resolution,
        params=params or None,
        seed=args.seed,
        overwrite=args.overwrite,
        log=lambda line: print(line, flush=True),
    )
    print(
        f"{args.system}: wrote {out} (stats.yaml included) in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0

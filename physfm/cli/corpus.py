"""``physfm corpus --out DIR`` — simulate, validate and shard every built-in system into one
pretraining set, resumable (a rerun keeps the systems an interrupted run finished)."""

from __future__ import annotations

import argparse
import os
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "corpus",
        help="build the multi-system pretraining set: simulate, validate, shard (resumable)",
        description="Simulate every chosen built-in system (in parallel processes), validate each, and shard "
        "them into one clip-shard set DIR/shards whose manifest gives every system the same share of "
        "batches; DIR/shards-1d, -2d, -3d are the same shards per dimensionality (one tokenizer codes "
        "one dimensionality).  Run it again after an interruption: finished systems are kept.",
        epilog="sizes: tiny (3 traj, 1/4 frames, 1/2 grid: a first look), small (1/2 traj and frames), "
        "default (each system's default size), large (4x traj)\n"
        "examples:\n"
        "  physfm corpus --out runs/corpus\n"
        "  physfm corpus --out runs/corpus-tiny --size tiny --systems burgers1d,wave2d\n"
        "  physfm corpus --out runs/corpus-2d --exclude burgers1d",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="corpus folder (created; reused on a rerun)"
    )
    p.add_argument(
        "--systems",
        default="",
        metavar="A,B",
        help="systems to build (default: all; see physfm simulate --list)",
    )
    p.add_argument("--exclude", default="", metavar="C,D", help="systems to leave out")
    p.add_argument(
        "--size", default="default", help="tiny | small | default | large (default: default)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every system's initial conditions (same seed, same corpus)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="parallel processes (default: cores, ≤ 4)",
    )
    p.set_defaults(func=run)


def names(text: str) -> list[str]:
    """``"a, b"`` → ``["a", "b"]``; ``"all"`` (like nothing) means every system."""
    return [] if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]


def run(args: argparse.Namespace) -> int:
    from data_pipelines.corpus import build_corpus
    from data_pipelines.manifest import Manifest

    start = time.perf_counter()
    written = build_corpus(
        args.out,
        systems=names(args.systems),
        exclude=names(args.exclude),
        size=args.size,
        seed=args.seed,
        workers=args.workers,
        log=lambda line: print(line, flush=True),
    )
    manifest = Manifest.coerce(written, f"{args.out}/shards/manifest.json")
    windows = {split: info.n_samples for split, info in manifest.splits.items()}
    print(
        f"corpus: {len(manifest.datasets)} system(s) in {args.out}/shards ({windows}) "
        f"in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0

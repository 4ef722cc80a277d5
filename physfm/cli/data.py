"""``physfm data validate|stats|shard|merge|bench`` — dataset checks, statistics, sharding, loader
speed."""

from __future__ import annotations

import argparse
import json
import os
import sys

from physfm.cli.args import add_split_argument, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="validate, describe and shard The Well datasets")
    verbs = parser.add_subparsers(dest="data_verb", metavar="ACTION")
    verbs.required = True
    _add_validate_parser(verbs)
    _add_stats_parser(verbs)
    _add_shard_parser(verbs)
    _add_merge_parser(verbs)
    _add_bench_parser(verbs)


def _add_validate_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "validate",
        help="check files or dataset dirs against The Well schema (exit 1 on any problem)",
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="HDF5 file, split folder or dataset folder"
    )
    p.set_defaults(func=run_validate)


def _add_stats_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("stats", help="(re)compute DIR/stats.yaml in one streaming pass")
    p.add_argument("dataset", metavar="DIR", help="The Well dataset folder (DIR/data/SPLIT/*.hdf5)")
    add_split_argument(p, "train", single=True)
    p.set_defaults(func=run_stats)


def _add_shard_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "shard", help="cut datasets into clips and write webdataset shards + manifest"
    )
    p.add_argument(
        "datasets", nargs="+", metavar="DIR", help="one or more The Well dataset folders"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="SHARDS",
        help="shard folder to write (SPLIT/shard-*.tar + manifest)",
    )
    p.add_argument(
        "--n-input", type=positive_int, default=4, help="default window: context frames (default 4)"
    )
    p.add_argument(
        "--n-output", type=positive_int, default=1, help="default window: target frames (default 1)"
    )
    p.add_argument(
        "--stride",
        type=positive_int,
        default=1,
        help="default window: steps between starts (default 1)",
    )
    p.add_argument(
        "--clip-frames",
        type=positive_int,
        default=32,
        help="frames per stored clip (default 32; ≤ 64 MiB)",
    )
    p.add_argument(
        "--max-shard-mb", type=float, default=256, help="start a new shard past this size in MiB"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes reading the HDF5 files (0 or 1: this process); the shards are identical either way",
    )
    p.add_argument(
        "--num-parts",
        type=positive_int,
        default=1,
        help="split the work into N parts (Slurm array)",
    )
    p.add_argument("--part", type=int, default=0, help="which part this run writes (0-based)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    p.set_defaults(func=run_shard)


def _add_merge_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "merge", help="merge the parts of an array-sharded set (after all --part runs)"
    )
    p.add_argument("shards", metavar="SHARDS", help="the --out folder the parts were written to")
    p.add_argument(
        "--num-parts", type=positive_int, default=None, help="expected number of parts (checked)"
    )
    p.set_defaults(func=run_merge)


def _add_bench_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "bench", help="loader samples/s (ours vs the_well WellDataset on the same data)"
    )
    p.add_argument(
        "shards", metavar="SHARDS", help="field shards to read (physfm data shard --out)"
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="samples per batch")
    p.add_argument(
        "--workers", type=int, default=2, help="loader worker processes (0: this process)"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="time budget per loader")
    p.set_defaults(func=run_bench)


def run_validate(args: argparse.Namespace) -> int:
    from data_pipelines.validate import validate_paths

    problems = validate_paths(args.paths)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"ok: {', '.join(map(str, args.paths))}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from data_pipelines.stats import compute_stats, write_stats

    path = write_stats(args.dataset, compute_stats(args.dataset, split=args.split[0]))
    print(f"wrote {path}")
    return 0


def run_shard(args: argparse.Namespace) -> int:
    from data_pipelines.sharding import ClipSpec, WindowSpec, shard_datasets
    from physfm.cli.progress import Progress

    spec = WindowSpec(args.n_input, args.n_output, args.stride)
    with Progress("sharding", unit="files") as progress:
        result = shard_datasets(
            args.datasets,
            args.out,
            spec,
            clips=ClipSpec(args.clip_frames),
            max_shard_mb=args.max_shard_mb,
            workers=args.workers,
            num_parts=args.num_parts,
            part=args.part,
            overwrite=args.overwrite,
            progress=progress.update,
        )
    if args.num_parts > 1:
        n = sum(r["n_samples"] for r in result["records"])
        print(
            f"part {args.part}/{args.num_parts}: {n} clips in {len(result['records'])} shards; "
            f"run `physfm data merge {args.out}` after all parts"
        )
        return 0
    print_manifest_summary(args.out, result)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from data_pipelines.sharding import merge_parts

    print_manifest_summary(args.shards, merge_parts(args.shards, args.num_parts))
    return 0


def print_manifest_summary(out: str, written: dict) -> None:
    from data_pipelines.manifest import Manifest

    manifest = Manifest.coerce(written, f"{out}/manifest.json")
    for split, info in manifest.splits.items():
        clips = sum(s.get("n_clips", 0) for s in info.shards)
        stored = f" ({clips} clips)" if clips else ""
        print(f"{out}/{split}: {info.n_samples} windows{stored} in {len(info.shards)} shards")
    for name, entry in manifest.datasets.items():
        shape = list(entry.spatial_shape) if entry.spatial_shape is not None else None
        print(f"  {name}: channels {', '.join(entry.channel_names)}; shape {shape}")


def run_bench(args: argparse.Namespace) -> int:
    from data_pipelines.bench import bench_loaders

    result = bench_loaders(
        args.shards, batch_size=args.batch_size, workers=args.workers, seconds=args.seconds
    )
    print(json.dumps(result))
    return 0

"""Loader throughput: physfm's clip-shard loader vs the_well's WellDataset on the same HDF5 files.

Makes its own data with the built-in navier_stokes2d simulator at 64² (the quickstart size) and
128², shards it (clips; default window 4 input + 1 output frames, stride 1), then times, side by
side in this one run, for 0, 1 and 2 DataLoader workers: our loader, the_well's WellDataset with its
cache on (its default) and off — same files, same windows, batch 16, no normalisation — and the
limit: the same windows copied from memory into a batch buffer by one thread.  Prints a table, then
one JSON line: ``ratio`` (ours / the_well by default, 64², 2 workers; target ≥ 10), ``ratio_128``,
``bytes_per_s`` and ``fraction_of_memcpy`` (ours at 64², 2 workers, vs ``memcpy_bytes_per_s``),
``storage_amplification`` (shard bytes / raw HDF5 bytes) and ``samples_per_s_by_workers`` (ours,
64²).  Every figure is the best of ``--repeats`` runs (the same for every loader), since other
processes on a small machine slow single runs down unevenly.  About 2½ minutes on 2 cores.

    python bench/data_loader.py [--seconds 2.5] [--repeats 2] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipelines.bench import (
    memcpy_bytes_per_s,
    ours_samples_per_s,
    well_samples_per_s,
    window_bytes,
)
from data_pipelines.sharding import WindowSpec, shard_datasets
from data_pipelines.simulators import simulate_dataset

# Sizes per resolution: enough trajectories that no loader serves everything from one small file.
DATA = {64: dict(n_traj=10, n_steps=64), 128: dict(n_traj=4, n_steps=32)}
WORKERS = (0, 1, 2)


def tree_bytes(root: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.5, help="time budget per measurement")
    parser.add_argument(
        "--repeats", type=int, default=2, help="measurements per figure (the best is kept)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    table: dict[int, dict[str, dict[int, float]]] = {}
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for resolution, sizes in DATA.items():
            data = simulate_dataset(
                "navier_stokes2d",
                Path(tmp) / f"data{resolution}",
                resolution=resolution,
                seed=args.seed,
                **sizes,
            )
            shards = Path(tmp) / f"shards{resolution}"
            shard_datasets([data], shards, WindowSpec(4, 1, 1), workers=2)
            if resolution == 64:
                result["storage_amplification"] = round(
                    tree_bytes(shards, "*.tar") / tree_bytes(data, "*.hdf5"), 3
                )
                result["window_bytes"] = window_bytes(shards)
                result["memcpy_bytes_per_s"] = round(
                    max(
                        memcpy_bytes_per_s(shards, batch_size=args.batch_size, seconds=args.seconds)
                        for _ in range(args.repeats)
                    )
                )
            rows: dict[str, dict[int, float]] = {
                "physfm": {},
                "the_well": {},
                "the_well (cache off)": {},
            }
            for workers in WORKERS:
                kw = dict(batch_size=args.batch_size, workers=workers, seconds=args.seconds)
                # interleaved, so a busy spell hits every loader alike
                for _ in range(args.repeats):
                    for name, rate in (
                        ("physfm", ours_samples_per_s(shards, **kw)[0]),
                        ("the_well", well_samples_per_s(shards, cache=True, **kw)[0]),
                        ("the_well (cache off)", well_samples_per_s(shards, cache=False, **kw)[0]),
                    ):
                        rows[name][workers] = max(rate, rows[name].get(workers, 0.0))
            table[resolution] = rows

    print(f"{'loader':<22}{'res':>5}" + "".join(f"{f'{w} workers':>12}" for w in WORKERS))
    for resolution, rows in table.items():
        for name, rates in rows.items():
            print(f"{name:<22}{resolution:>5}" + "".join(f"{rates[w]:>12.0f}" for w in WORKERS))
    ours64, ours128 = table[64]["physfm"], table[128]["physfm"]
    bytes_per_s = ours64[2] * result["window_bytes"]
    result.update(
        ratio=round(ours64[2] / table[64]["the_well"][2], 2),
        ratio_128=round(ours128[2] / table[128]["the_well"][2], 2),
        ratio_cache_off=round(ours64[2] / table[64]["the_well (cache off)"][2], 2),
        ratio_128_cache_off=round(ours128[2] / table[128]["the_well (cache off)"][2], 2),
        bytes_per_s=round(bytes_per_s),
        fraction_of_memcpy=round(bytes_per_s / result["memcpy_bytes_per_s"], 3),
        samples_per_s_by_workers={str(w): round(ours64[w], 1) for w in WORKERS},
        samples_per_s_by_workers_128={str(w): round(ours128[w], 1) for w in WORKERS},
        worker_scaling=round(ours64[2] / ours64[0], 2),
        table={
            str(res): {
                name: {str(w): round(r, 1) for w, r in rates.items()}
                for name, rates in rows.items()
            }
            for res, rows in table.items()
        },
        batch_size=args.batch_size,
        window=[4, 1],
        seconds_per_measurement=args.seconds,
        repeats=args.repeats,
        wall_s=round(time.perf_counter() - started, 1),
        machine=f"{platform.machine()}, python {platform.python_version()}",
    )
    print(
        f"ratio {result['ratio']}x (128²: {result['ratio_128']}x); {bytes_per_s / 1e9:.2f} GB/s = "
        f"{result['fraction_of_memcpy']:.0%} of memcpy; storage {result['storage_amplification']}x raw"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

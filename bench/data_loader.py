"""Loader throughput: physfm's shard loader vs the_well's WellDataset on the same HDF5 files.

Makes its own data with a built-in simulator (default: navier_stokes2d at 64², the quickstart size),
shards it, then times both loaders side by side in this one run: same files, same window sizes
(4 input + 1 output frames), same batch size, torch DataLoader with 2 workers each, no normalisation.
Prints a table, then one JSON line whose ``ratio`` is ours / the_well samples per second (target ≥ 5).

    python bench/data_loader.py [--system navier_stokes2d] [--n-traj 10] [--resolution 64] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipelines.bench import bench_loaders
from data_pipelines.sharding import WindowSpec, shard_datasets
from data_pipelines.simulators import simulate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="navier_stokes2d")
    parser.add_argument("--n-traj", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = simulate_dataset(
            args.system, Path(tmp) / "data", n_traj=args.n_traj, resolution=args.resolution, seed=args.seed
        )
        shards = Path(tmp) / "shards"
        shard_datasets([data], shards, WindowSpec(4, 1, 1), workers=args.workers)
        result = bench_loaders(shards, batch_size=args.batch_size, workers=args.workers, seconds=args.seconds)
    result.update(system=args.system, n_traj=args.n_traj, seed=args.seed, python=platform.python_version())
    print(f"{'loader':<12}{'samples/s':>12}{'samples':>10}")
    print(f"{'physfm':<12}{result['ours_samples_per_s']:>12.0f}{result['ours_samples']:>10}")
    print(f"{'the_well':<12}{result['the_well_samples_per_s']:>12.0f}{result['the_well_samples']:>10}")
    print(
        f"ratio (physfm / the_well): {result['ratio']:.2f}x  — {result['machine']}, "
        f"batch {args.batch_size}, {args.workers} workers, window 4+1"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

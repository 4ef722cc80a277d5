"""Loader throughput: our shard loader vs ``the_well.data.WellDataset`` over the same HDF5 files.

Both run through a torch ``DataLoader`` with the same batch size and worker count and the same window
sizes (``n_input``/``n_output`` from the shard manifest), without normalisation on either side, for a fixed
time budget after a warm-up batch.  The ratio (ours / the_well samples/s) is measured in one run.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def samples_per_second(batches: Iterable[Any], batch_len, seconds: float) -> tuple[float, int]:
    it = iter(batches)
    next(it)  # warm-up: worker start and first shard/file open are not throughput
    n, start = 0, time.perf_counter()
    for batch in it:
        n += batch_len(batch)
        if time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    return n / elapsed, n


def bench_loaders(shards: str | Path, *, batch_size: int = 16, workers: int = 2, seconds: float = 10.0) -> dict:
    from the_well.data import WellDataset

    from data_pipelines.loader import make_loader
    from data_pipelines.shards import read_manifest

    manifest = read_manifest(shards)
    dataset_name, entry = next(iter(manifest["datasets"].items()))
    split_dir = Path(entry["source_dir"]) / "data" / "train"
    ours = make_loader(
        str(shards),
        "train",
        batch_size,
        num_workers=workers,
        normalize=False,
        resampled=True,
        batches_per_epoch=1_000_000,
        dataset_weights={dataset_name: 1.0},
        seed=0,
    )
    ours_rate, ours_n = samples_per_second(ours, lambda b: b["input"].shape[0], seconds)

    well = WellDataset(
        path=str(split_dir),
        n_steps_input=manifest["n_input"],
        n_steps_output=manifest["n_output"],
        use_normalization=False,
    )
    well_loader = torch.utils.data.DataLoader(
        well,
        batch_size=batch_size,
        num_workers=workers,
        # Sample with replacement so a small dataset never runs dry inside the time budget.
        sampler=torch.utils.data.RandomSampler(
            well, replacement=True, num_samples=10**8, generator=torch.Generator().manual_seed(0)
        ),
    )
    well_rate, well_n = samples_per_second(well_loader, lambda b: b["input_fields"].shape[0], seconds)
    return {
        "dataset": dataset_name,
        "window": [manifest["n_input"], manifest["n_output"]],
        "batch_size": batch_size,
        "workers": workers,
        "ours_samples_per_s": round(ours_rate, 1),
        "the_well_samples_per_s": round(well_rate, 1),
        "ours_samples": ours_n,
        "the_well_samples": well_n,
        "ratio": round(ours_rate / well_rate, 2),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
    }

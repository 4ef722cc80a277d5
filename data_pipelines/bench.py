"""Loader throughput: our shard loader vs ``the_well.data.WellDataset`` over the same HDF5 files.

Both run through a torch ``DataLoader`` with the same batch size and worker count and the same
windows (``n_input``/``n_output`` from the shard manifest, stride 1), without normalisation on
either side, for a fixed time budget after a warm-up batch.  The ratio (ours / the_well samples/s)
is measured in one run. :func:`memcpy_bytes_per_s` gives the limit: the same windows copied from
memory into a batch buffer.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.loader import make_loader
from data_pipelines.manifest import DatasetEntry, Manifest
from data_pipelines.well_io import WellReader, list_split_files


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


def _first_dataset(shards: str | Path) -> tuple[Manifest, str, DatasetEntry]:
    manifest = Manifest.load(shards)
    name, entry = next(iter(manifest.datasets.items()))
    return manifest, name, entry


def ours_samples_per_s(
    shards: str | Path, *, batch_size: int, workers: int, seconds: float
) -> tuple[float, int]:
    """Our loader, resampled training mode, one dataset, no normalisation."""
    _, name, _ = _first_dataset(shards)
    loader = make_loader(
        str(shards),
        "train",
        batch_size,
        num_workers=workers,
        normalize=False,
        resampled=True,
        batches_per_epoch=1_000_000,
        dataset_weights={name: 1.0},
        seed=0,
    )
    return samples_per_second(loader, lambda b: b["input"].shape[0], seconds)


def well_samples_per_s(
    shards: str | Path, *, batch_size: int, workers: int, seconds: float, cache: bool = True
) -> tuple[float, int]:
    """the_well's ``WellDataset`` over the shards' source files (``cache``: its ``cache_small``, on
    by default)."""
    from the_well.data import WellDataset

    manifest, _, entry = _first_dataset(shards)
    well = WellDataset(
        path=str(Path(str(entry.source_dir)) / "data" / "train"),
        n_steps_input=manifest.window.n_input,
        n_steps_output=manifest.window.n_output,
        use_normalization=False,
        cache_small=cache,
    )
    loader = torch.utils.data.DataLoader(
        well,
        batch_size=batch_size,
        num_workers=workers,
        # Sample with replacement so a small dataset never runs dry inside the time budget.
        sampler=torch.utils.data.RandomSampler(
            well, replacement=True, num_samples=10**8, generator=torch.Generator().manual_seed(0)
        ),
    )
    return samples_per_second(loader, lambda b: b["input_fields"].shape[0], seconds)


def window_bytes(shards: str | Path) -> int:
    """Bytes of one float32 window (input + output) of the shards' first dataset."""
    manifest, _, entry = _first_dataset(shards)
    frame = len(entry.channel_names) * int(np.prod(entry.spatial_shape or ())) * 4
    return manifest.window.length * frame


def memcpy_bytes_per_s(
    shards: str | Path, *, batch_size: int, seconds: float, seed: int = 0
) -> float:
    """The limit: the same windows (random starts in the train trajectories, held in memory) copied
    into a preallocated batch buffer by one thread, ``batch_size`` windows per batch."""
    manifest, _, entry = _first_dataset(shards)
    length = manifest.window.length
    trajectories = []
    for path in list_split_files(str(entry.source_dir), "train"):
        with WellReader(path) as reader:
            trajectories += [reader.frames(t) for t in range(reader.n_trajectories)]
    batch = np.empty((batch_size, length, *trajectories[0].shape[1:]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    picks = [(int(rng.integers(len(trajectories))), float(rng.random())) for _ in range(4096)]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(batch_size):
            traj, where = picks[(n + i) % len(picks)]
            frames = trajectories[traj]
            s = int(where * (len(frames) - length + 1))
            batch[i] = frames[s : s + length]
        n += batch_size
    return n * batch[0].nbytes / (time.perf_counter() - start)


def bench_loaders(
    shards: str | Path, *, batch_size: int = 16, workers: int = 2, seconds: float = 10.0
) -> dict:
    """Ours vs the_well (as it runs by default) at one worker count: samples/s and their ratio."""
    manifest, name, _ = _first_dataset(shards)
    kw = dict(batch_size=batch_size, workers=workers, seconds=seconds)
    ours_rate, ours_n = ours_samples_per_s(shards, **kw)
    well_rate, well_n = well_samples_per_s(shards, **kw)
    return {
        "dataset": name,
        "window": [manifest.window.n_input, manifest.window.n_output],
        "batch_size": batch_size,
        "workers": workers,
        "ours_samples_per_s": round(ours_rate, 1),
        "the_well_samples_per_s": round(well_rate, 1),
        "ours_samples": ours_n,
        "the_well_samples": well_n,
        "ratio": round(ours_rate / well_rate, 2),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
    }

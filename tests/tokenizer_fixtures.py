"""Tiny shard sets of smooth travelling waves for the tokenizer tests (written directly, in
milliseconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.shards import ShardWriter, write_manifest


def wave_windows(
    n: int, n_frames: int, channels: int, shape: tuple[int, ...], seed: int
) -> np.ndarray:
    """[n, T, C, *shape] float32: per window and channel a random plane wave moving in time, plus an
    offset."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(
        *[np.linspace(0, 2 * np.pi, s, endpoint=False) for s in shape], indexing="ij"
    )
    out = np.empty((n, n_frames, channels, *shape), dtype=np.float32)
    for i in range(n):
        for c in range(channels):
            k = rng.integers(1, 3, size=len(shape))
            phase, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.6)
            arg = sum(kd * g for kd, g in zip(k, grids))
            for t in range(n_frames):
                out[i, t, c] = 2.0 * c + np.sin(arg + phase - speed * t)
    return out


def write_wave_shards(
    root: str | Path,
    datasets: dict[str, tuple[list[str], tuple[int, ...]]],
    n_train: int = 8,
    n_valid: int = 4,
    n_input: int = 4,
    n_output: int = 1,
    seed: int = 0,
) -> Path:
    """Shards for ``{name: (channel_names, spatial_shape)}`` with train and valid splits +
    manifest."""
    root = Path(root)
    manifest_datasets, splits = {}, {}
    per_split = {"train": n_train, "valid": n_valid}
    windows = {}
    for j, (name, (channels, shape)) in enumerate(datasets.items()):
        for split, count in per_split.items():
            windows[name, split] = wave_windows(
                count, n_input + n_output, len(channels), shape, seed + 17 * j + len(split)
            )
        train = windows[name, "train"]
        mean = train.mean(axis=tuple(i for i in range(train.ndim) if i != 2))
        std = train.std(axis=tuple(i for i in range(train.ndim) if i != 2))
        manifest_datasets[name] = {
            "channel_names": list(channels),
            "fields": [{"name": c, "order": 0} for c in channels],
            "spatial_dims": ["x", "y", "z"][: len(shape)],
            "spatial_shape": list(shape),
            "stats": {
                "mean": mean.tolist(),
                "std": std.tolist(),
                "mean_delta": [0.0] * len(channels),
                "std_delta": [1.0] * len(channels),
            },
            "simulation_parameters": [],
        }
    for split in per_split:
        with ShardWriter(root / split) as writer:
            for name in datasets:
                for i, window in enumerate(windows[name, split]):
                    meta = {
                        "dataset": name,
                        "source_file": f"{name}.hdf5",
                        "trajectory": i,
                        "start": 0,
                        "params": {},
                    }
                    writer.write(
                        f"{name}_{i:05d}",
                        {
                            "input.npy": window[:n_input],
                            "output.npy": window[n_input:],
                            "meta.json": meta,
                        },
                        dataset=name,
                    )
        records = writer.records
        shards = [{**r, "path": f"{split}/{r['path']}"} for r in records]
        splits[split] = {"shards": shards, "n_samples": sum(r["n_samples"] for r in shards)}
    write_manifest(
        root,
        {
            "n_input": n_input,
            "n_output": n_output,
            "stride": 1,
            "datasets": manifest_datasets,
            "splits": splits,
        },
    )
    return root

"""Small synthetic The Well datasets for tests (random fields; fast to write)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.well_format import Field, WellData
from data_pipelines.well_io import write_well


def make_toy_dataset(
    out: str | Path,
    name: str = "toy",
    *,
    n_files: int = 2,
    n_traj: int = 3,
    n_steps: int = 12,
    resolution: int = 16,
    n_dims: int = 2,
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    offset: float = 0.0,
) -> Path:
    """Write ``out/data/{split}/{name}_{i}.hdf5``: a t0 field ``u`` and a t1 field ``vel`` per file."""
    rng = np.random.default_rng(seed)
    dims = ["x", "y", "z"][:n_dims]
    space = (resolution,) * n_dims
    for split in splits:
        for i in range(n_files):
            u = offset + rng.standard_normal((n_traj, n_steps, *space)).astype(np.float32)
            vel = rng.standard_normal((n_traj, n_steps, *space, n_dims)).astype(np.float32)
            data = WellData(
                dataset_name=name,
                spatial_dims=dims,
                coords={d: np.linspace(0, 1, resolution, dtype=np.float32) for d in dims},
                time=np.arange(n_steps, dtype=np.float32),
                fields=[Field("u", 0, u), Field("vel", 1, vel)],
                simulation_parameters={"nu": 0.1 * (i + 1)},
            )
            write_well(Path(out) / "data" / split / f"{name}_{i}.hdf5", data)
    return Path(out)


def make_token_shards(
    out: str | Path,
    *,
    datasets: tuple[str, ...] = ("alpha", "beta"),
    n_windows: int = 64,
    n_frames: int = 3,
    n_context: int = 2,
    grid: tuple[int, ...] = (4, 4),
    vocab: int = 32,
    seed: int = 0,
    fingerprint: str = "test-tokenizer",
    n_shards: int = 2,
) -> Path:
    """Token shards with a learnable rule: each frame is the previous one shifted by +1 (mod vocab),
    with a dataset-specific offset, so next-frame loss can fall far below log(vocab)."""
    from data_pipelines.shards import ShardWriter, write_manifest

    rng = np.random.default_rng(seed)
    out = Path(out)
    splits = {}
    for split, n in (("train", n_windows), ("valid", n_windows // 4), ("test", n_windows // 4)):
        records = []
        per_shard = max(1, n // n_shards)
        writer = ShardWriter(out / split, max_shard_bytes=1 << 40)
        for i in range(n):
            name = datasets[i % len(datasets)]
            step = 1 + datasets.index(name)
            first = rng.integers(0, vocab, size=grid)
            tokens = np.stack([(first + step * t) % vocab for t in range(n_frames)]).astype(np.int16)
            meta = {"dataset": name, "source_file": f"{name}.hdf5", "trajectory": i, "start": 0, "params": {}}
            writer.write(f"w{i:06d}", {"tokens.npy": tokens, "meta.json": meta}, dataset=name)
            if (i + 1) % per_shard == 0:
                writer._finish()
        records = [{**r, "path": f"{split}/{r['path']}"} for r in writer.close()]
        splits[split] = {"shards": records, "n_samples": n}
    write_manifest(out, {
        "n_input": n_context, "n_output": n_frames - n_context, "stride": 1,
        "token_layout": {"n_context_frames": n_context, "n_frames": n_frames, "grid": list(grid)},
        "tokenizer_fingerprint": fingerprint,
        "datasets": {name: {"channel_names": ["u"], "spatial_shape": [16] * len(grid), "stats": {}}
                     for name in datasets},
        "splits": splits,
    })
    return out

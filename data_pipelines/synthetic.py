"""Small random :class:`WellData` objects covering every feature of the schema — for tests and
benches that need a The Well file without running a simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.well_format import BoundaryCondition, Field, Scalar, WellData

DIM_NAMES = ("x", "y", "z")


def random_well_data(
    n_dims: int = 2,
    n_traj: int = 2,
    n_steps: int = 6,
    size: int = 8,
    seed: int = 0,
    orders: tuple[int, ...] = (0, 1, 2),
    constant_fields: bool = True,
    offset: float = 0.0,
    dataset_name: str = "synthetic",
) -> WellData:
    """A file with one time-varying field per tensor order in ``orders`` (``u``, ``v``, ``s``),
    plus, when ``constant_fields``: a t0 field constant in time (``mask``), a t1 field constant in
    time and across trajectories (``b``), constant / time-varying / per-trajectory scalars, and two
    boundary conditions. ``offset`` shifts field values (to test statistics far from zero)."""
    rng = np.random.default_rng(seed)
    dims = list(DIM_NAMES[:n_dims])
    # uneven grid sizes catch axis mix-ups
    shape = tuple(size + i for i in range(n_dims))
    coords = {d: np.linspace(0.0, 1.0, n, dtype=np.float32) for d, n in zip(dims, shape)}
    time = np.arange(n_steps, dtype=np.float32) * 0.1
    names = {0: "u", 1: "v", 2: "s"}

    def values(*lead, order):
        return (offset + rng.standard_normal((*lead, *shape, *(n_dims,) * order))).astype(
            np.float32
        )

    fields = [Field(names[o], o, values(n_traj, n_steps, order=o)) for o in orders]
    scalars: list[Scalar] = []
    bcs: list[BoundaryCondition] = []
    if constant_fields:
        fields.insert(1, Field("mask", 0, values(n_traj, order=0), time_varying=False))
        fields.append(Field("b", 1, values(order=1), time_varying=False, sample_varying=False))
        scalars = [
            Scalar("forcing", rng.random(n_steps).astype(np.float32), time_varying=True),
            Scalar("seed_energy", rng.random(n_traj), sample_varying=True),
        ]
        wall = np.zeros(shape[-1], dtype=bool)
        wall[[0, -1]] = True
        bcs = [
            BoundaryCondition("x_periodic", "PERIODIC", ["x"]),
            BoundaryCondition(f"{dims[-1]}_wall", "WALL", [dims[-1]], ["u"], mask=wall),
        ]
    return WellData(
        dataset_name=dataset_name,
        spatial_dims=dims,
        coords=coords,
        time=time,
        fields=fields,
        simulation_parameters={"nu": 0.01 * (seed + 1), "Re": 100.0},
        scalars=scalars,
        boundary_conditions=bcs,
    )


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
            tokens = np.stack([(first + step * t) % vocab for t in range(n_frames)]).astype(
                np.int16
            )
            meta = {
                "dataset": name,
                "source_file": f"{name}.hdf5",
                "trajectory": i,
                "start": 0,
                "params": {},
            }
            writer.write(f"w{i:06d}", {"tokens.npy": tokens, "meta.json": meta}, dataset=name)
            if (i + 1) % per_shard == 0:
                writer.finish_shard()
        records = [{**r, "path": f"{split}/{r['path']}"} for r in writer.close()]
        splits[split] = {"shards": records, "n_samples": n}
    write_manifest(
        out,
        {
            "n_input": n_context,
            "n_output": n_frames - n_context,
            "stride": 1,
            "token_layout": {
                "n_context_frames": n_context,
                "n_frames": n_frames,
                "grid": list(grid),
            },
            "tokenizer_fingerprint": fingerprint,
            "datasets": {
                name: {"channel_names": ["u"], "spatial_shape": [16] * len(grid), "stats": {}}
                for name in datasets
            },
            "splits": splits,
        },
    )
    return out

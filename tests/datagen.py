"""Small synthetic The Well datasets for tests (random fields; fast to write)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.synthetic import make_token_shards  # noqa: F401  (re-exported for tests)
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
    """Write ``out/data/{split}/{name}_{i}.hdf5``: a t0 field ``u`` and a t1 field ``vel`` per
    file."""
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


# Overrides of configs/pretrain/tiny.yaml that make a pretrain run take seconds on a CPU (tests
# only).
TINY_PRETRAIN = [
    "model.vocab_size=32",
    # synthetic tokens (a +1 shift rule) are no FSQ codes: the one-softmax head, argmax decoding
    "model.fsq_levels=[32]",
    "model.head=vocab",
    "model.greedy=mode",
    "model.grid_shape=[4,4]",
    "model.n_layer=2",
    "model.d_model=64",
    "model.ffn_hidden=128",
    "model.max_frames=3",
    "trainer.logger=csv",
    "trainer.progress_bar=false",
    "data.num_workers=0",
    "data.batch_size=8",
    "optim.warmup_steps=5",
]

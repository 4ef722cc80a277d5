"""A whole tiny model in about a second: smooth Well files → shards → untrained tokenizer → AR
export.

Nothing here is trained (the tests that need training train the refiner only); what the rollout,
evaluate and refine tests check — shapes, cache equivalence, metric wiring, files — does not depend
on a good model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_pipelines.well_format import Field, WellData
from data_pipelines.well_io import write_well
from tests.tiny_model import export_ar_model, tiny_model_config


def write_wave_dataset(
    out: Path,
    name: str = "waves",
    n_traj: int = 2,
    n_steps: int = 14,
    resolution: int = 16,
    n_dims: int = 2,
    seed: int = 0,
) -> Path:
    """``out/data/{train,valid,test}/NAME.hdf5``: plane waves moving in time (a t0 field ``u`` and a
    t1 ``vel``)."""
    rng = np.random.default_rng(seed)
    dims = ["x", "y", "z"][:n_dims]
    axes = np.meshgrid(
        *[np.linspace(0, 2 * np.pi, resolution, endpoint=False)] * n_dims, indexing="ij"
    )
    for split_index, split in enumerate(("train", "valid", "test")):
        u = np.empty((n_traj, n_steps, *axes[0].shape), dtype=np.float32)
        vel = np.empty((n_traj, n_steps, *axes[0].shape, n_dims), dtype=np.float32)
        for i in range(n_traj):
            k = rng.integers(1, 3, size=n_dims)
            phase, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.5)
            arg = sum(kd * a for kd, a in zip(k, axes))
            for t in range(n_steps):
                u[i, t] = 1.0 + np.sin(arg + phase - speed * t)
                for d in range(n_dims):
                    vel[i, t, ..., d] = np.cos(arg + phase - speed * t + d)
        data = WellData(
            dataset_name=name,
            spatial_dims=dims,
            coords={d: np.linspace(0, 1, resolution, dtype=np.float32) for d in dims},
            time=np.arange(n_steps, dtype=np.float32),
            fields=[Field("u", 0, u), Field("vel", 1, vel)],
            simulation_parameters={"speed": 0.3 + 0.1 * split_index},
        )
        write_well(out / "data" / split / f"{name}.hdf5", data)
    return out


def build_tiny_model(
    root: Path,
    datasets: tuple[str, ...] = ("waves",),
    n_input: int = 4,
    n_output: int = 1,
    seed: int = 0,
    conditional: bool = False,
    prediction: str = "raster",
    n_dims: int = 2,
) -> dict[str, Path]:
    """Datasets, shards, a random tokenizer and a random AR export under ``root``; returns their
    paths. ``conditional``: a conditional tokenizer (key frame + frames coded given the previous
    one); ``prediction``: the AR model's mode ("raster" or "next_frame"); ``n_dims``: spatial axes
    of the data, tokenizer and model."""
    from data_pipelines.sharding import WindowSpec, shard_datasets
    from data_pipelines.shards import read_manifest
    from physfm.models.ar import PhysicsTransformer
    from tokenizer.checkpoint import save_tokenizer
    from tokenizer.model import DatasetSpec, Tokenizer, TokenizerConfig

    torch.manual_seed(seed)
    dirs = [
        write_wave_dataset(root / "data" / name, name, seed=seed + i, n_dims=n_dims)
        for i, name in enumerate(datasets)
    ]
    shards = root / "shards"
    shard_datasets([str(d) for d in dirs], shards, WindowSpec(n_input, n_output, 1))
    manifest = read_manifest(shards)
    specs = {
        name: DatasetSpec(
            entry["channel_names"],
            entry["stats"]["mean"],
            [s if s > 0 else 1.0 for s in entry["stats"]["std"]],
        )
        for name, entry in manifest["datasets"].items()
    }
    tok_cfg = TokenizerConfig(
        n_spatial_dims=n_dims,
        levels=[4, 4],
        spatial_compression=4,
        patch_size=2,
        width=8,
        max_width=16,
        temporal_kernel=1 if conditional else 2,
        conditional=conditional,
    )
    tok_dir = save_tokenizer(Tokenizer(tok_cfg, specs), root / "tokenizer")
    model = PhysicsTransformer(
        tiny_model_config(
            max_frames=n_input + n_output,
            n_datasets=4,
            prediction=prediction,
            **({} if n_dims == 2 else {"grid_shape": [4] * n_dims, "n_spatial_dims": n_dims}),
        )
    )
    export = export_ar_model(
        model,
        root / "export",
        dataset_names=sorted(datasets),
        n_context_frames=n_input,
        tokenizer=tok_dir,
    )
    return {"shards": shards, "tokenizer": tok_dir, "export": export, "data": dirs[0]}

"""Token shards whose codes depend on a simulation parameter, and a tiny random AR model that reads
them.

Each trajectory has one value of ``nu``; its windows draw codes from a distribution whose mean code
rises with log ν, so a linear probe can recover ν from the windows while whole trajectories are held
out.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from tests.tiny_model import export_ar_model, tiny_ar_model, tiny_model_config

GRID = (4, 4)
VOCAB = 16
N_FRAMES, N_CONTEXT = 3, 2
FINGERPRINT = "test-tokenizer"


def make_param_tokens(
    out: Path,
    nu_values=(1e-3, 2e-3, 4e-3, 8e-3),
    n_traj: int = 2,
    windows_per_traj: int = 6,
    seed: int = 0,
) -> Path:
    """``out/{train,valid,test}``: one file per ν value, ``n_traj`` trajectories each, meta params
    {"nu"}."""
    from data_pipelines.shards import ShardWriter, write_manifest

    rng = np.random.default_rng(seed)
    lo, hi = math.log(min(nu_values)), math.log(max(nu_values))
    splits = {}
    for split in ("train", "valid", "test"):
        writer = ShardWriter(out / split, max_shard_bytes=1 << 40)
        n = 0
        for nu in nu_values:
            level = (math.log(nu) - lo) / max(hi - lo, 1e-9)  # 0 … 1
            for traj in range(n_traj):
                for start in range(windows_per_traj):
                    mean = 2 + level * (VOCAB - 5)
                    tokens = np.clip(
                        rng.normal(mean, 2.0, size=(N_FRAMES, *GRID)).round(), 0, VOCAB - 1
                    )
                    meta = {
                        "dataset": "toy",
                        "source_file": f"toy_nu_{nu:g}.hdf5",
                        "trajectory": traj,
                        "start": start,
                        "params": {"nu": nu, "drag": 0.1},
                    }
                    writer.write(
                        f"{split}_{n:06d}",
                        {"tokens.npy": tokens.astype(np.int32), "meta.json": meta},
                        dataset="toy",
                    )
                    n += 1
        records = [{**r, "path": f"{split}/{r['path']}"} for r in writer.close()]
        splits[split] = {"shards": records, "n_samples": n}
    write_manifest(
        out,
        {
            "n_input": N_CONTEXT,
            "n_output": N_FRAMES - N_CONTEXT,
            "stride": 1,
            "token_layout": {
                "n_context_frames": N_CONTEXT,
                "n_frames": N_FRAMES,
                "grid": list(GRID),
            },
            "tokenizer_fingerprint": FINGERPRINT,
            "datasets": {"toy": {"channel_names": ["u"], "spatial_shape": [16, 16], "stats": {}}},
            "splits": splits,
        },
    )
    return out


def export_tiny_model(out: Path, seed: int = 0) -> Path:
    """An export directory ``load_ar_model`` reads (no tokenizer: token shards only)."""
    model = tiny_ar_model(seed)
    return export_ar_model(
        model,
        out,
        dataset_names=["toy"],
        n_context_frames=N_CONTEXT,
        tokenizer_fingerprint=FINGERPRINT,
    )


def build_tiny_viscosity_model(
    root: Path, name: str = "navier_stokes2d", nus=(1e-3, 1e-2), seed: int = 0
) -> dict:
    """Field data of ``name`` with one file per ν (waves that move faster at high ν), shards, a
    random tokenizer and a random AR export — the shape of the quickstart's run, in about a
    second."""
    from data_pipelines.sharding import WindowSpec, shard_datasets
    from data_pipelines.shards import read_manifest
    from data_pipelines.well_format import Field, WellData
    from data_pipelines.well_io import write_well
    from physfm.models.ar import PhysicsTransformer
    from tokenizer.checkpoint import save_tokenizer
    from tokenizer.model import DatasetSpec, Tokenizer, TokenizerConfig

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, n_steps = 16, 10
    x = np.linspace(0, 2 * np.pi, n, endpoint=False)
    X, Y = np.meshgrid(x, x, indexing="ij")
    for split in ("train", "valid", "test"):
        for nu in nus:
            w = np.empty((2, n_steps, n, n), np.float32)
            for i in range(2):
                phase = rng.uniform(0, 2 * np.pi)
                for t in range(n_steps):
                    w[i, t] = np.sin(X + Y + phase - 20 * nu * t) + 0.3 * rng.standard_normal(
                        (n, n)
                    )
            data = WellData(
                dataset_name=name,
                spatial_dims=["x", "y"],
                coords={d: np.linspace(0, 1, n, dtype=np.float32) for d in "xy"},
                time=np.arange(n_steps, dtype=np.float32),
                fields=[Field("u", 0, w)],
                simulation_parameters={"nu": nu},
            )
            write_well(root / "data" / "data" / split / f"{name}_nu_{nu:g}.hdf5", data)
    shards = root / "shards"
    shard_datasets([root / "data"], shards, WindowSpec(2, 1, 1))
    entry = read_manifest(shards)["datasets"][name]
    spec = DatasetSpec(
        entry["channel_names"], entry["stats"]["mean"], [s or 1.0 for s in entry["stats"]["std"]]
    )
    tok_cfg = TokenizerConfig(
        n_spatial_dims=2,
        levels=[4, 4],
        spatial_compression=4,
        patch_size=2,
        width=8,
        max_width=16,
        temporal_kernel=2,
    )
    tok_dir = save_tokenizer(Tokenizer(tok_cfg, {name: spec}), root / "tokenizer")
    model = PhysicsTransformer(tiny_model_config())
    export = export_ar_model(
        model, root / "export", dataset_names=[name], n_context_frames=2, tokenizer=tok_dir
    )
    return {"shards": shards, "export": export, "tokenizer": tok_dir}

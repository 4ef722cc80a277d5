"""The Well HDF5 I/O, validation, statistics, built-in simulators, sharding and the streaming
loader.

    from data_pipelines import WellReader, shard_datasets, make_loader
    with WellReader("data/train/file.hdf5") as r:
        frames = r.frames(trajectory=0, start=0, stop=5)      # [T, C, *space] float32
    shard_datasets(["my_dataset"], "shards")                   # clips → webdataset tars + manifest
    for batch in make_loader("shards", "train", batch_size=8, window=(4, 1, 1)):  # any window; one dataset per batch
        batch["input"], batch["output"]                        # [B, T_in, C, *space], [B, T_out, C, *space]

Imports nothing from ``tokenizer`` or ``physfm``.
"""

import importlib

# Public name → defining module. Resolved on first use (PEP 562) so that importing a light module
# such as data_pipelines.config does not pull in torch, h5py and webdataset.
_EXPORTS = {
    "ConfigError": "config",
    "load_config": "config",
    "DataError": "errors",
    "InputError": "errors",
    "UnknownNameError": "errors",
    "PhysfmError": "errors",
    "Manifest": "manifest",
    "Normalizer": "loader",
    "WindowStream": "loader",
    "make_loader": "loader",
    "ClipSpec": "sharding",
    "WindowSpec": "sharding",
    "merge_parts": "sharding",
    "shard_datasets": "sharding",
    "iter_samples": "shards",
    "read_manifest": "shards",
    "channel_stats": "stats",
    "compute_stats": "stats",
    "read_stats": "stats",
    "write_stats": "stats",
    "Problem": "validate",
    "validate_paths": "validate",
    "BoundaryCondition": "well_format",
    "Field": "well_format",
    "Scalar": "well_format",
    "WellData": "well_format",
    "WellReader": "well_io",
    "list_split_files": "well_io",
    "read_well": "well_io",
    "write_well": "well_io",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data_pipelines' has no attribute {name!r}")
    return getattr(importlib.import_module(f"data_pipelines.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)

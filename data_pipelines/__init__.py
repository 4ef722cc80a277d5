"""The Well HDF5 I/O, validation, statistics, built-in simulators, sharding and the streaming loader.

    from data_pipelines import WellReader, shard_datasets, make_loader
    with WellReader("data/train/file.hdf5") as r:
        frames = r.frames(trajectory=0, start=0, stop=5)      # [T, C, *space] float32
    shard_datasets(["my_dataset"], "shards")                   # windows → webdataset tars + manifest
    for batch in make_loader("shards", "train", batch_size=8):  # normalised, one dataset per batch
        batch["input"], batch["output"]                        # [B, T_in, C, *space], [B, T_out, C, *space]

Imports nothing from ``tokenizer`` or ``physfm``.
"""

from data_pipelines.config import ConfigError, load_config
from data_pipelines.errors import DataError
from data_pipelines.loader import Normalizer, WindowStream, make_loader
from data_pipelines.sharding import WindowSpec, merge_parts, shard_datasets
from data_pipelines.shards import iter_samples, read_manifest
from data_pipelines.stats import channel_stats, compute_stats, read_stats, write_stats
from data_pipelines.validate import Problem, validate_paths
from data_pipelines.well_format import BoundaryCondition, Field, Scalar, WellData
from data_pipelines.well_io import WellReader, list_split_files, read_well, write_well

__all__ = [
    "BoundaryCondition", "ConfigError", "DataError", "Field", "Normalizer", "Problem", "Scalar", "WellData",
    "WellReader", "WindowSpec", "WindowStream", "channel_stats", "compute_stats", "iter_samples", "list_split_files",
    "load_config", "make_loader", "merge_parts", "read_manifest", "read_stats", "read_well", "shard_datasets",
    "validate_paths", "write_stats", "write_well",
]

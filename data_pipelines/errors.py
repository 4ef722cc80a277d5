"""Errors raised for bad data; each message names the file, and where known the trajectory, field,
time index, shard or member, so a user can find the problem without a traceback."""


class DataError(ValueError):
    """Bad or unreadable input data (HDF5 files, shards, manifests, stats)."""

"""Errors raised for bad input; each message names the file, and where known the trajectory, field,
time index, shard or member, so a user can find the problem without a traceback."""


class PhysfmError(Exception):
    """The user's input or environment is wrong (a file, a config key, an argument): the ``physfm``
    CLI prints the message as one line and exits with code 2.  Every such error class derives from
    it; anything else is a bug and keeps its traceback."""


class DataError(PhysfmError, ValueError):
    """Bad or unreadable input data (HDF5 files, shards, manifests, stats)."""


class InputError(PhysfmError, ValueError):
    """A bad argument to a library function or CLI verb (a horizon, a dataset name, a hook point, a
    selection); the message names the argument."""


class UnknownNameError(InputError, KeyError):
    """A name (dataset, hook point) that a model, tokenizer or refiner does not know; also a
    ``KeyError`` so existing ``except KeyError`` callers keep working."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""

"""Errors of physfm's own artifacts; each message names the file."""

from data_pipelines.errors import PhysfmError


class CheckpointError(PhysfmError, ValueError):
    """A checkpoint that is missing, incomplete, unsafe or unreadable; the message names the file."""

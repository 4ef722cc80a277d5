"""Errors of physfm's own artifacts; each message names the file."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, unsafe or unreadable; the message names the file."""

"""Errors of physfm's own artifacts; each message names the file."""

from data_pipelines.errors import PhysfmError


class CheckpointError(PhysfmError, ValueError):
    """A checkpoint that is missing, incomplete, unsafe or unreadable; the message names the
    file."""


class RunStopped(Exception):
    """A run stopped early on purpose (a signal) with its state saved; ``exit_code`` says why (75
    requeue, 143 SIGTERM, 130 SIGINT).  Any verb that trains in-process (quickstart, finetune) ends
    with it: the CLI prints the message as one line and exits with that code, never 0 and never a
    traceback."""

    exit_code = 1

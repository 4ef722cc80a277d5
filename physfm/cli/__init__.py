"""The ``physfm`` command line: one module per verb, each a thin layer over library functions.

Every verb module exposes ``register(subparsers)``; its library imports sit inside the verb's
function (they pull torch and Lightning), so ``physfm --help`` starts instantly."""

from physfm.cli.main import UserError, build_parser, main

__all__ = ["UserError", "build_parser", "main"]

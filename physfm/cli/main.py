"""The ``physfm`` command line: the parser and ``main``; one module per verb beside this one, each a
thin layer over library functions.  Every verb module exposes ``register(subparsers)``; heavy
imports stay inside the verb's function so ``physfm --help`` is instant."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from data_pipelines.errors import PhysfmError
from physfm.core.errors import RunStopped

# Verb modules, in the order ``physfm --help`` lists them.
VERB_MODULES = [
    "physfm.cli.simulate",
    "physfm.cli.corpus",
    "physfm.cli.data",
    "physfm.cli.tokenizer",
    "physfm.cli.pretrain",
    "physfm.cli.finetune",
    "physfm.cli.export",
    "physfm.cli.refine",
    "physfm.cli.rollout",
    "physfm.cli.evaluate",
    "physfm.cli.probe",
    "physfm.cli.steer",
    "physfm.cli.quickstart",
    "physfm.cli.estimate",
    "physfm.cli.view",
]


# Exit code of an error in the user's input or environment (argparse uses the same for bad
# arguments).
USER_ERROR_EXIT_CODE = 2


class UserError(PhysfmError):
    """An error in a verb's arguments found by the CLI itself; like every :class:`PhysfmError`,
    printed as one line with exit code 2 (no traceback)."""


class ShowDefaults(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help when the text does not give its default already;
    an option whose default is None/False (not given, off) or that is required shows none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default == []
        shown = not unset and not action.required
        if shown and action.option_strings and "default" not in text and "%(default)" not in text:
            value = (
                ",".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
            )
            text = f"{text} (default: {value})" if text else f"(default: {value})"
        return text


class ShowDefaultsRawDescription(ShowDefaults, argparse.RawDescriptionHelpFormatter):
    """:class:`ShowDefaults` for a verb whose description or epilog is laid out by hand
    (examples)."""


def every_parser(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser under it, depth first."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += every_parser(sub)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="physfm",
        description="Pretrain, fine-tune, probe and steer discrete-token physics foundation models.",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers.required = True
    for name in VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    for each in every_parser(parser):
        raw = issubclass(each.formatter_class, argparse.RawDescriptionHelpFormatter)
        each.formatter_class = ShowDefaultsRawDescription if raw else ShowDefaults
    return parser


def quiet_known_warnings() -> None:
    """Silence library warnings that say nothing about the user's run (they hide the ones that
    do)."""
    import warnings

    # Lightning's hint when a machine has Slurm installed but the command was not started by srun.
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def one_line(err: BaseException) -> str:
    """The error's message on one line (a multi-line message keeps its lines, joined by '; ')."""
    return (
        "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        or type(err).__name__
    )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")  # nothing may need the network at run time
    quiet_known_warnings()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    # the user's input or environment; any other exception is a bug: traceback
    except PhysfmError as err:
        print(f"physfm {args.verb}: error: {one_line(err)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except RunStopped as stopped:  # a signal stopped an in-process training stage (quickstart, ...)
        print(f"physfm {args.verb}: {one_line(stopped)}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print(f"physfm {args.verb}: interrupted", file=sys.stderr)
        return 130

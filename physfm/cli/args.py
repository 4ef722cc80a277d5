"""Flags shared by several verbs, parsed one way everywhere: ``--split``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

SPLITS = ("train", "valid", "test")


def parse_splits(text: str) -> list[str]:
    """``"valid,test"`` → ``["valid", "test"]``; every name must be one of train/valid/test."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected split names, e.g. valid,test")
    unknown = [s for s in names if s not in SPLITS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown split {unknown[0]!r} (splits: {', '.join(SPLITS)})"
        )
    return names


class _SplitAction(argparse.Action):
    """``--split valid,test`` or ``--split valid --split test`` (the repeated form kept for older
    scripts): the first use replaces the default, later ones add to it; duplicates are dropped,
    order kept."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, single: bool = False, **kwargs
    ) -> None:
        self.single = single
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest, None)
        splits = [] if current is None or current is self.default else list(current)
        splits += [s for s in values if s not in splits]
        if self.single and len(splits) > 1:
            raise argparse.ArgumentError(self, f"this verb reads one split, got {','.join(splits)}")
        setattr(namespace, self.dest, splits)


def add_split_argument(
    parser: argparse.ArgumentParser,
    default: str | None,
    *,
    single: bool = False,
    help: str | None = None,
) -> None:
    """Add ``--split`` to ``parser``: a comma-separated list of train/valid/test (the flag may be
    repeated). ``args.split`` is a list of names, or ``None`` when ``default`` is ``None`` and the
    flag is not given. ``single``: the verb reads one split; two are a one-line usage error."""
    what = "split to read" if single else "split(s) to read, comma-separated"
    shown = default if default is not None else "all"
    parser.add_argument(
        "--split",
        action=_SplitAction,
        type=parse_splits,
        single=single,
        default=parse_splits(default) if default is not None else None,
        metavar="SPLIT" if single else "SPLIT[,SPLIT...]",
        help=help or f"{what}: train, valid or test (default: {shown})",
    )


def positive_int(text: str) -> int:
    """argparse ``type`` for counts and sizes: an integer >= 1.  Checked at parsing, so a 0 is
    refused like a -2 and never reaches code where it could read as "not given"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value

"""Run the README's "A short tour" block as written, at tiny sizes: each command keeps its own
arguments and gains only size flags (fewer trajectories and steps, a smaller grid, a few optimiser
steps), so a command that cannot run as written fails here.  ``python -m tests.readme_tour WORKDIR``
runs it by hand."""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Size flags per verb (matched on the leading words of the command); nothing else is changed.
TINY_TRAIN = [
    "trainer.max_steps=2",
    "trainer.checkpoint_every=2",
    "trainer.val_every=0",
    "trainer.log_every=1",
]
TINY_RUN = [
    *TINY_TRAIN,
    "trainer.logger=csv",
    "trainer.progress_bar=false",
    "data.num_workers=0",
    "data.val_batches=1",
]
TINY: list[tuple[tuple[str, ...], list[str]]] = [
    (("simulate", "--list"), []),
    (("simulate",), ["--n-traj", "3", "--n-steps", "14", "--resolution", "32"]),
    (("data", "shard"), ["--workers", "0"]),
    (("data", "bench"), ["--seconds", "0.2", "--workers", "0"]),
    (("tokenizer", "train"), ["trainer.max_steps=2", "trainer.wandb=false", "data.val_batches=1"]),
    (("tokenizer", "eval"), ["--max-batches", "1"]),
    (("pretrain",), TINY_RUN),
    (
        ("refine",),
        ["train.steps=2", "data.n_windows=4", "data.rollout_steps=1", "data.val_windows=2"],
    ),
    (("rollout",), ["--max-windows", "1"]),
    (("evaluate",), ["--max-windows", "1"]),
    (("probe",), ["--max-windows", "48", "--folds", "3"]),
    (("finetune",), [*TINY_RUN, "finetune.tokenizer_steps=2", "finetune.eval_max_windows=2"]),
    (("steer", "direction"), ["--max-windows", "16"]),
    (("steer", "rollout"), ["--max-windows", "1"]),
]


def tour_commands(readme: Path = REPO / "README.md") -> list[list[str]]:
    """The tour's commands as argument lists (``physfm`` dropped), comments and line continuations
    resolved."""
    text = readme.read_text()
    section = text[text.index("## A short tour") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README: the tour has no ```bash block"
    commands = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "physfm":
            commands.append(words[1:])
    return commands


def tiny(argv: list[str]) -> list[str]:
    for prefix, extra in TINY:
        if tuple(argv[: len(prefix)]) == prefix or (
            prefix == ("simulate", "--list") and argv == list(prefix)
        ):
            return argv + extra
    return argv


def run_tour(workdir: Path, log=print) -> list[tuple[list[str], float]]:
    """Run every tour command in ``workdir`` (which gets a ``configs`` link to the repository's);
    returns (command, seconds) per command; raises on the first that fails."""
    from physfm.cli import main

    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "configs").exists():
        (workdir / "configs").symlink_to(REPO / "configs")
    timings = []
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for argv in tour_commands():
            start = time.perf_counter()
            code = main(tiny(argv))
            seconds = time.perf_counter() - start
            log(f"[{seconds:6.1f} s] physfm {shlex.join(argv)} -> {code}")
            if code != 0:
                raise RuntimeError(f"README tour: `physfm {shlex.join(argv)}` exited {code}")
            timings.append((argv, seconds))
    finally:
        os.chdir(cwd)
    return timings


if __name__ == "__main__":
    run_tour(Path(sys.argv[1]))

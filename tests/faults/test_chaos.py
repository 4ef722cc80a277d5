"""Chaos: ``kill -9`` at random moments of ``data shard``, ``tokenizer train``, ``pretrain`` and
``export``, a few trials each.  Each kill waits for a sign that the work is under way (a staging
folder, the run folder, the k-th checkpoint) and then a random delay, both drawn from a fixed seed,
so the kills land in the work rather than in the interpreter's start-up on a fast or a slow machine.
After each kill: nothing corrupt (an output is absent or whole); the same command then completes, no
staging is left, and pretraining's exported weights equal an uninterrupted run's bit for bit.
Outcomes are printed (-s)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.shards import iter_samples, read_manifest
from physfm.cli import main
from physfm.core.checkpoint import is_complete, load_safetensors
from tests.faults.conftest import CLI_TIMEOUT, pretrain_args
from tests.harness import REPO_ROOT, kill_tree, worker_env

SEED = 27
TOKENIZER_TINY = [
    "model.width=8",
    "model.max_width=16",
    "data.batch_size=4",
    "trainer.wandb=false",
    "trainer.verbose=false",
    "data.val_batches=1",
    "trainer.max_steps=6",
]
PRETRAIN = (
    "trainer.max_steps=12",
    "trainer.checkpoint_every=2",
    "trainer.keep_last=20",
    "data.val_batches=0",
    "trainer.logger=none",
)

pytestmark = pytest.mark.slow


def physfm_process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "physfm.cli", *map(str, args)],
        cwd=REPO_ROOT,
        env=worker_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def killed_at(
    args: list[str], ready: Callable[[], bool], delay: float, poll: float = 0.01
) -> tuple[bool, float]:
    """Start ``physfm ARGS``; once ``ready()`` holds, wait ``delay`` seconds more, then SIGKILL it
    and all it started.  Returns (whether it was still running then, seconds from the start to the
    kill)."""
    proc = physfm_process(args)
    start = time.monotonic()
    try:
        while not ready() and proc.poll() is None:
            assert time.monotonic() - start < CLI_TIMEOUT, (
                f"no sign of work after {CLI_TIMEOUT:.0f} s: {args}"
            )
            time.sleep(poll)
        try:
            proc.wait(timeout=delay)
            return False, time.monotonic() - start
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            return True, time.monotonic() - start
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait()


def draws(verb: str, n: int, high: float) -> list[float]:
    """``n`` delays in [0, ``high``) s, the same on every run (a fixed seed per verb)."""
    rng = np.random.default_rng([SEED, sum(map(ord, verb))])
    return [float(d) for d in rng.uniform(0.0, high, size=n)]


def staged(parent: Path, name: str) -> Callable[[], bool]:
    return lambda: any(parent.glob(f".{name}.*.tmp"))


def saved_at_least(run: Path, k: int) -> Callable[[], bool]:
    return lambda: len(list(run.glob("checkpoints/step=*.ckpt"))) >= k


def staging_left(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith((".tmp", ".old")))


def report(verb: str, outcomes: list[str]) -> None:
    print(f"\nchaos {verb}: {len(outcomes)} trials: {', '.join(outcomes)}")


def shard_is_whole(out: Path, n_samples: dict[str, int]) -> None:
    manifest = read_manifest(out)
    for split, count in n_samples.items():
        assert (
            sum(1 for _ in iter_samples(out, split))
            == count
            == manifest["splits"][split]["n_samples"]
        )


def tars(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.tar"))}


def test_kill_9_during_data_shard(toy_dataset: Path, tmp_path: Path) -> None:
    def args(out: Path) -> list[str]:
        return [
            "data",
            "shard",
            str(toy_dataset),
            "--out",
            str(out),
            "--workers",
            "1",
            "--max-shard-mb",
            "0.05",
        ]

    reference = tmp_path / "reference"
    assert main(args(reference)) == 0
    counts = {s: e["n_samples"] for s, e in read_manifest(reference)["splits"].items()}
    outcomes = []
    for i, delay in enumerate(draws("shard", 3, 0.5)):
        out = tmp_path / f"trial{i}"
        killed, at = killed_at(args(out), staged(tmp_path, out.name), delay)
        if out.exists():
            shard_is_whole(out, counts)  # a published shard set is whole, never half
        assert main([*args(out), "--overwrite"]) == 0
        shard_is_whole(out, counts)
        assert tars(out) == tars(reference)
        assert not staging_left(tmp_path), staging_left(tmp_path)
        outcomes.append(
            f"{'killed' if killed else 'finished'} {delay:.2f}s into staging ({at:.1f}s), re-run ok"
        )
    report("data shard", outcomes)


def test_kill_9_during_tokenizer_train(tokens_fields: Path, tmp_path: Path) -> None:
    from tokenizer.checkpoint import load_tokenizer

    def args(run: Path) -> list[str]:
        return [
            "tokenizer",
            "train",
            "--config",
            "configs/tokenizer/tiny.yaml",
            f"data.shards={tokens_fields}",
        ] + [
            f"out={run}",
            *TOKENIZER_TINY,
        ]

    outcomes = []
    for i, delay in enumerate(draws("tokenizer", 2, 3.0)):
        run = tmp_path / f"trial{i}"
        killed, at = killed_at(args(run), run.exists, delay)
        checkpoints = [p for p in run.rglob("tokenizer.json")] if run.exists() else []
        for meta in checkpoints:
            load_tokenizer(meta.parent)  # whatever was published loads
        assert main(args(run)) == 0
        load_tokenizer(run)
        assert not staging_left(run), staging_left(run)
        outcomes.append(
            f"{'killed' if killed else 'finished'} {delay:.2f}s into the run ({at:.1f}s), re-run ok"
        )
    report("tokenizer train", outcomes)


@pytest.fixture(scope="module")
def pretrained(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An uninterrupted tiny pretraining run and its exported weights."""
    root = tmp_path_factory.mktemp("chaos_pretrain")
    assert main(pretrain_args(tokens, root / "run", *PRETRAIN)) == 0
    assert main(["export", "--ckpt", str(root / "run"), "--out", str(root / "export")]) == 0
    return root / "run", load_safetensors(root / "export")[0]


def test_kill_9_during_pretrain_resumes_to_the_same_weights(
    pretrained, tokens: Path, tmp_path: Path
) -> None:
    _, expected = pretrained
    outcomes = []
    rng = np.random.default_rng(SEED)
    for i, delay in enumerate(draws("pretrain", 2, 0.3)):
        run = tmp_path / f"trial{i}"
        args = pretrain_args(tokens, run, *PRETRAIN)
        after = int(rng.integers(1, 5))  # the k-th checkpoint (steps 2, 4, ...), then the delay
        killed, at = killed_at(args, saved_at_least(run, after), delay)
        saved = (
            sorted((run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").exists() else []
        )
        # a save cut off never leaves a whole-looking file
        assert all(is_complete(p) for p in saved), saved
        assert main(args) == 0
        assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / f"export{i}")]) == 0
        got, _ = load_safetensors(tmp_path / f"export{i}")
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), f"trial {i}: weights differ"
        assert not staging_left(run), staging_left(run)
        resumed = saved[-1].name if saved else "scratch"
        outcomes.append(
            f"{'killed' if killed else 'finished'} {delay:.2f}s after checkpoint {after} ({at:.1f}s), "
            f"resumed from {resumed}, weights equal"
        )
    report("pretrain", outcomes)


def test_kill_9_during_export(pretrained, tmp_path: Path) -> None:
    run, expected = pretrained
    outcomes = []
    # The tiny model's write takes milliseconds: poll fast and kill within a few of the staging's
    # birth.
    for i, delay in enumerate(draws("export", 2, 0.003)):
        out = tmp_path / f"trial{i}"
        args = ["export", "--ckpt", str(run), "--out", str(out)]
        killed, at = killed_at(args, staged(tmp_path, out.name), delay, poll=0.001)
        if out.exists():
            load_safetensors(out)  # a published export is whole
        assert main(args) == 0
        got, _ = load_safetensors(out)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
        assert not staging_left(tmp_path), staging_left(tmp_path)
        outcomes.append(
            f"{'killed' if killed else 'finished'} {delay * 1e3:.1f} ms into staging ({at:.1f}s), re-run ok"
        )
    report("export", outcomes)


@pytest.fixture()
def tokens_fields(tmp_path: Path) -> Path:
    """Field shards of a small 2D dataset for the tokenizer to train on."""
    from tests.tokenizer_fixtures import write_wave_shards

    return write_wave_shards(tmp_path / "fields", {"waves": (["u", "v"], (16, 16))})

"""Case 9: the disk fills up while sharding or checkpointing → a clear one-line error, exit 2, and
the previous outputs (shard set, checkpoints) intact; no temporary file is left to be taken for
whole.

Two ways to run out of space (``small_disk`` in conftest.py): a real 32 MiB tmpfs filled up (ENOSPC;
needs root) and a per-file size limit (RLIMIT_FSIZE → EFBIG; works anywhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from physfm.cli import main
from physfm.core.checkpoint import find_latest_checkpoint, safe_torch_load
from tests.faults.conftest import digest, pretrain_args

DISK_FULL_WORDS = ("No space left on device", "File too large")


def error_line(stderr: str, verb: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith(f"physfm {verb}: error:")]
    assert len(lines) == 1, stderr
    assert any(w in lines[0] for w in DISK_FULL_WORDS), lines[0]
    return lines[0]


def test_sharding_on_a_full_disk(small_disk, toy_dataset: Path, capsys) -> None:
    out = small_disk.root / "shards"
    args = [
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
    assert main(args) == 0
    before = digest(out)
    capsys.readouterr()
    with small_disk.full(free_kb=8):  # clip shards store each frame once: a shard here is ~20 KB
        code = main(args + ["--overwrite", "--n-input", "2"])
    assert code == 2
    line = error_line(capsys.readouterr().err, "data")
    assert str(out) in line and "previous" in line
    assert digest(out) == before  # the previous shard set is untouched
    assert sorted(p.name for p in small_disk.root.iterdir()) == ["shards"]  # no staging dir left


@pytest.mark.slow
def test_checkpointing_on_a_full_disk(small_disk, tokens: Path, capsys) -> None:
    out = small_disk.root / "run"
    common = ("trainer.checkpoint_every=4", "trainer.logger=none", "data.val_batches=0")
    assert main(pretrain_args(tokens, out, "trainer.max_steps=4", *common)) == 0
    previous = out / "checkpoints" / "step=0000004.ckpt"
    before = digest(previous)
    capsys.readouterr()
    with small_disk.full(free_kb=256):  # a checkpoint is ~1 MB
        code = main(pretrain_args(tokens, out, "trainer.max_steps=8", *common))
    assert code == 2
    line = error_line(capsys.readouterr().err, "pretrain")
    assert "step=0000008.ckpt" in line
    # no partial file
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [previous.name]
    assert digest(previous) == before and find_latest_checkpoint(out / "checkpoints") == previous
    assert safe_torch_load(previous)["global_step"] == 4

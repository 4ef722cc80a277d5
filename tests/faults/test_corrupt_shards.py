"""Case 4: a corrupt or truncated tar shard mid-epoch → the loader names the shard; with
``on_error="skip"`` (``data.on_error=skip`` in a training config) it skips, and the skipped samples
are counted in the batches, the logs and the run's metrics.json — never silently."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest

from data_pipelines.errors import DataError
from data_pipelines.loader import make_loader
from physfm.cli import main
from tests.faults.conftest import pretrain_args
from tests.faults.test_hostile_files import replace_member


def truncate(shard: Path) -> None:
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])  # cut in the middle of a member


@pytest.fixture()
def damaged(tokens: Path, tmp_path: Path) -> Path:
    """The token shards with train shards 0 and 1 truncated half-way (shard 2 is whole)."""
    copy = tmp_path / "tokens"
    shutil.copytree(tokens, copy)
    for i in (0, 1):
        truncate(copy / "train" / f"shard-{i:06d}.tar")
    return copy


def train_stream(shards: Path, on_error: str, batches: int = 12):
    return make_loader(
        str(shards),
        "train",
        4,
        resampled=True,
        batches_per_epoch=batches,
        keys=("tokens",),
        normalize=False,
        on_error=on_error,
    )


def test_truncated_shard_is_named(damaged: Path) -> None:
    named = r"shard .*/train/shard-00000[01]\.tar: (unreadable after member|sample w\d+ has no meta.json)"
    with pytest.raises(DataError, match=named):
        list(train_stream(damaged, "raise"))


def test_skip_counts_and_logs_the_skipped_shard(damaged: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="data_pipelines.loader"):
        batches = list(train_stream(damaged, "skip"))
    # full batches still
    assert len(batches) == 12 and all(b["tokens"].shape[0] == 4 for b in batches)
    assert batches[-1]["skipped_samples"] > 0
    assert sum(b["skipped_new"] for b in batches) == batches[-1]["skipped_samples"]
    warned = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert warned and "train/shard-00000" in warned[0]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_corrupt_member_in_a_whole_tar(on_error: str, tokens: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tokens"
    shutil.copytree(tokens, copy)
    shard = copy / "valid" / "shard-000001.tar"
    name = replace_member(shard, "tokens.npy", b"\x93NUMPY garbage")
    loader = make_loader(
        str(copy), "valid", 2, shuffle=False, keys=("tokens",), normalize=False, on_error=on_error
    )
    if on_error == "raise":
        with pytest.raises(DataError, match=rf"{shard}: member {name} is corrupt"):
            list(loader)
        return
    batches = list(loader)
    assert batches[-1]["skipped_samples"] == 1
    total = sum(b["tokens"].shape[0] for b in batches)
    assert total == 11 - 1  # every other window arrives


@pytest.mark.timeout(60)
def test_skip_with_every_shard_unreadable_fails_instead_of_spinning(
    tokens: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "tokens"
    shutil.copytree(tokens, copy)
    for shard in (copy / "train").glob("*.tar"):
        shard.write_bytes(b"not a tar at all" * 64)
    with pytest.raises(DataError, match="no readable samples"):
        list(train_stream(copy, "skip", batches=2))


@pytest.mark.slow
def test_training_with_skip_reports_skipped_samples(
    damaged: Path, tmp_path: Path, capsys, caplog
) -> None:
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="data_pipelines.loader"):
        assert (
            main(
                pretrain_args(
                    damaged,
                    out,
                    "trainer.max_steps=6",
                    "trainer.log_every=1",
                    "data.on_error=skip",
                    "data.val_batches=0",
                )
            )
            == 0
        )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_skipped_samples"] > 0
    rows = list(csv.DictReader((out / "logs" / "from-step-0000000" / "metrics.csv").open()))
    logged = [float(r["data/skipped_samples"]) for r in rows if r.get("data/skipped_samples")]
    assert logged and logged[-1] == metrics["data_skipped_samples"]
    # the log names each shard
    assert any("train/shard-00000" in r.getMessage() for r in caplog.records)
    assert "corrupt sample(s) skipped so far" in capsys.readouterr().err
    assert "Skipped" in (out / "report.md").read_text()


@pytest.mark.slow
def test_training_without_skip_stops_naming_the_shard(
    damaged: Path, tmp_path: Path, capsys
) -> None:
    assert (
        main(pretrain_args(damaged, tmp_path / "run", "trainer.max_steps=6", "data.val_batches=0"))
        == 2
    )
    lines = [
        ln
        for ln in capsys.readouterr().err.splitlines()
        if ln.startswith("physfm pretrain: error:")
    ]
    assert len(lines) == 1 and "train/shard-00000" in lines[0], lines

"""Case 3: damaged The Well files → ``physfm data validate`` and ``physfm data shard`` name the
file, trajectory, field (and time index for NaN/Inf), exit non-zero, and leave nothing partial
behind."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from physfm.cli import main
from tests.faults.conftest import digest

VICTIM = "data/valid/toy_1.hdf5"  # not the first file: earlier units have already written shards


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


def not_hdf5(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:1024] = bytes(1024)  # superblock gone
    path.write_bytes(bytes(data))


def missing_group(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f["t1_fields"]


def wrong_rank(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        attrs = dict(f["t0_fields/u"].attrs)
        data = f["t0_fields/u"][()]
        del f["t0_fields/u"]
        # [traj, t, x]: a y axis lost
        f.create_dataset("t0_fields/u", data=data[..., 0]).attrs.update(attrs)


def nan_value(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["t0_fields/u"][1, 5, 3, 3] = np.nan


def inf_value(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["t1_fields/vel"][0, 2, 1, 1, 1] = np.inf


# damage → what validate must say (after the file name), what shard must say
DAMAGE = {
    "truncated": (truncate, ["not a readable HDF5 file, or truncated"], ["truncated"]),
    "not hdf5": (not_hdf5, ["not a readable HDF5 file"], ["not a readable HDF5 file"]),
    "missing group": (missing_group, ["t1_fields: group missing"], ["t1_fields"]),
    "wrong rank": (wrong_rank, ["t0_fields/u: rank 3"], ["t0_fields/u", "shape"]),
    "nan": (
        nan_value,
        ["t0_fields/u trajectory 1 time 5", "NaN/Inf"],
        ["trajectory 1", "field u", "time index 5", "non-finite"],
    ),
    "inf": (
        inf_value,
        ["t1_fields/vel trajectory 0 time 2", "NaN/Inf"],
        ["trajectory 0", "field vel_y", "time index 2", "non-finite"],
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_validate_names_the_problem(damage: str, toy_dataset: Path, capsys) -> None:
    edit, expected, _ = DAMAGE[damage]
    victim = toy_dataset / VICTIM
    edit(victim)
    assert main(["data", "validate", str(toy_dataset)]) == 1
    out = capsys.readouterr()
    lines = [ln for ln in out.out.splitlines() if ln.startswith(str(victim))]
    assert lines, out.out
    assert any(all(e in ln for e in expected) for ln in lines), lines
    assert "Traceback" not in out.out + out.err


@pytest.mark.parametrize("with_stats", [False, True], ids=["stats-computed-first", "stats-present"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_shard_fails_naming_the_problem_and_leaves_nothing_partial(
    damage: str, with_stats: bool, toy_dataset: Path, tmp_path: Path, capsys
) -> None:
    edit, _, expected = DAMAGE[damage]
    out = tmp_path / "shards"
    # a previous good shard set and stats.yaml exist: a failed re-shard must not touch them
    if with_stats:
        assert main(["data", "shard", str(toy_dataset), "--out", str(out), "--workers", "1"]) == 0
        before = digest(out)
        stats_before = (toy_dataset / "stats.yaml").read_bytes()
    edit(toy_dataset / VICTIM)
    args = [
        "data",
        "shard",
        str(toy_dataset),
        "--out",
        str(out),
        "--workers",
        "1",
        "--max-shard-mb",
        "0.01",
    ]
    assert main(args + (["--overwrite"] if with_stats else [])) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("physfm data: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(toy_dataset / VICTIM) in lines[0] and all(e in lines[0] for e in expected), lines[0]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"partial output left behind: {leftovers}"
    if with_stats:
        assert digest(out) == before and (toy_dataset / "stats.yaml").read_bytes() == stats_before
    else:
        assert not out.exists()
        assert not list(toy_dataset.glob("*stats*.tmp")) and not list(toy_dataset.glob(".*"))


@pytest.mark.slow
def test_parallel_shard_failure_leaves_nothing_partial(
    toy_dataset: Path, tmp_path: Path, capsys
) -> None:
    nan_value(toy_dataset / VICTIM)
    out = tmp_path / "shards"
    assert main(["data", "shard", str(toy_dataset), "--out", str(out), "--workers", "2"]) == 2
    assert "time index 5" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]

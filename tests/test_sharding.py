"""Sharding: windows, determinism across worker counts, atomicity, array parts + merge."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_pipelines.errors import DataError
from data_pipelines.sharding import WindowSpec, merge_parts, shard_datasets
from data_pipelines.shards import iter_samples, read_manifest
from data_pipelines.well_io import WellReader
from tests.datagen import make_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy")


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.tar"))}


def test_windows_match_source_frames(toy, tmp_path):
    out = tmp_path / "shards"
    manifest = shard_datasets(
        [toy], out, WindowSpec(n_input=3, n_output=2, stride=2), max_shard_mb=0.05
    )
    # 12 steps, window 5, stride 2 → starts 0,2,4,6 → 4 windows × 3 traj × 2 files per split
    assert manifest["splits"]["train"]["n_samples"] == 24
    assert len(manifest["splits"]["train"]["shards"]) > 1  # size bound respected
    entry = manifest["datasets"]["toy"]
    assert entry["channel_names"] == ["u", "vel_x", "vel_y"]
    assert len(entry["stats"]["mean"]) == 3
    samples = list(iter_samples(out, "train"))
    assert len(samples) == 24 and len({s["__key__"] for s in samples}) == 24
    s = samples[5]
    with WellReader(toy / "data" / "train" / s["meta"]["source_file"]) as reader:
        frames = reader.frames(s["meta"]["trajectory"], s["meta"]["start"], s["meta"]["start"] + 5)
        assert s["meta"]["params"] == {"nu": pytest.approx(reader.simulation_parameters["nu"])}
    np.testing.assert_array_equal(s["input"], frames[:3])
    np.testing.assert_array_equal(s["output"], frames[3:])
    assert s["input"].dtype == np.float32


@pytest.mark.slow
def test_output_identical_for_any_worker_count(toy, tmp_path):
    shard_datasets([toy], tmp_path / "w1", workers=1, max_shard_mb=0.05)
    shard_datasets([toy], tmp_path / "w2", workers=2, max_shard_mb=0.05)
    one, two = shard_bytes(tmp_path / "w1"), shard_bytes(tmp_path / "w2")
    assert one.keys() == two.keys() and one == two
    assert read_manifest(tmp_path / "w1")["splits"] == read_manifest(tmp_path / "w2")["splits"]


def test_existing_output_needs_overwrite(toy, tmp_path):
    shard_datasets([toy], tmp_path / "s")
    with pytest.raises(DataError, match="--overwrite"):
        shard_datasets([toy], tmp_path / "s")
    shard_datasets([toy], tmp_path / "s", WindowSpec(2, 1, 1), overwrite=True)
    assert read_manifest(tmp_path / "s")["n_input"] == 2


@pytest.mark.slow
def test_nan_names_file_trajectory_field_time_and_leaves_previous_output(toy, tmp_path):
    bad = make_toy_dataset(tmp_path / "bad", n_files=1)
    out = tmp_path / "s"
    shard_datasets([bad], out)
    before = shard_bytes(out)
    path = bad / "data" / "valid" / "toy_0.hdf5"
    with h5py.File(path, "r+") as f:
        f["t1_fields/vel"][1, 7, 3, 4, 1] = np.nan
    with pytest.raises(DataError) as err:
        shard_datasets([bad], out, overwrite=True, workers=2)
    msg = str(err.value)
    assert "toy_0.hdf5" in msg and "trajectory 1" in msg and "vel_y" in msg
    assert shard_bytes(out) == before  # previous output intact
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]  # nothing partial left


def test_missing_train_split_is_named(tmp_path):
    ds = make_toy_dataset(tmp_path / "d", splits=("valid",), n_files=1)
    with pytest.raises(DataError, match="no train split"):
        shard_datasets([ds], tmp_path / "s")


def test_array_parts_merge_to_single_run(toy, tmp_path):
    shard_datasets([toy], tmp_path / "single", max_shard_mb=0.05)
    out = tmp_path / "array"
    for part in (2, 0, 1):  # order of array tasks must not matter
        shard_datasets([toy], out, num_parts=3, part=part, max_shard_mb=0.05)
    with pytest.raises(DataError, match="expected 4 parts"):
        merge_parts(out, num_parts=4)
    merge_parts(out, num_parts=3)
    assert shard_bytes(out) == shard_bytes(tmp_path / "single")
    assert read_manifest(out)["splits"] == read_manifest(tmp_path / "single")["splits"]
    assert not (out / "parts").exists()


def test_two_datasets_with_different_shapes(tmp_path):
    a = make_toy_dataset(tmp_path / "a", "alpha", n_files=1)
    b = make_toy_dataset(tmp_path / "b", "beta", n_files=1, n_dims=1, resolution=32)
    manifest = shard_datasets([a, b], tmp_path / "s")
    assert set(manifest["datasets"]) == {"alpha", "beta"}
    assert manifest["datasets"]["beta"]["channel_names"] == ["u", "vel_x"]
    shapes = {s["meta"]["dataset"]: s["input"].shape for s in iter_samples(tmp_path / "s", "test")}
    assert shapes == {"alpha": (4, 3, 16, 16), "beta": (4, 2, 32)}
    json.dumps(manifest)  # manifest is plain JSON


BOUNDED_SHARDING = """
import resource, sys, tracemalloc
from data_pipelines.sharding import ClipSpec, shard_datasets
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()
manifest = shard_datasets([sys.argv[1]], sys.argv[2], clips=ClipSpec(16))
traced = tracemalloc.get_traced_memory()[1]
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(traced, grown, manifest["splits"]["train"]["n_samples"])
"""


@pytest.mark.slow
def test_a_file_larger_than_the_memory_cap_shards_in_bounded_memory(tmp_path):
    """Sharding (stats pass included) reads a clip at a time: peak memory stays far below the file's
    size."""
    import subprocess
    import sys

    ds = make_toy_dataset(
        tmp_path / "big", n_files=1, n_traj=2, n_steps=600, resolution=64, splits=("train",)
    )
    raw = sum(p.stat().st_size for p in ds.rglob("*.hdf5"))
    cap = 20 << 20
    assert raw > 2.5 * cap  # ~56 MB of frames
    # A fresh process (no torch) so its peak resident size measures this sharding run alone.
    done = subprocess.run(
        [sys.executable, "-c", BOUNDED_SHARDING, str(ds), str(tmp_path / "shards")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    traced, grown, n_windows = map(int, done.stdout.split())
    assert traced < cap and grown < cap, (traced, grown)
    assert n_windows == 2 * (600 - 4)
    sample = next(
        s for s in iter_samples(tmp_path / "shards", "train") if s["meta"]["start"] == 590
    )
    with WellReader(ds / "data" / "train" / sample["meta"]["source_file"]) as reader:
        np.testing.assert_array_equal(
            sample["input"], reader.frames(sample["meta"]["trajectory"], 590, 594)
        )


def test_long_source_file_names_shard_with_unique_keys(tmp_path):
    # Built-in systems with several parameters name files past the 100 bytes a tar member name
    # holds.
    data = make_toy_dataset(tmp_path / "long")
    for split in ("train", "valid", "test"):
        for i, path in enumerate(sorted((data / "data" / split).glob("*.hdf5"))):
            path.rename(
                path.with_name(f"{'mobility_1_epsilon_1.5_mean_concentration_0.3_' * 2}{i}.hdf5")
            )
    manifest = shard_datasets(
        [data], tmp_path / "shards", WindowSpec(n_input=3, n_output=2, stride=2)
    )
    samples = list(iter_samples(tmp_path / "shards", "train"))
    assert len(samples) == manifest["splits"]["train"]["n_samples"] == 24
    assert len({s["__key__"] for s in samples}) == 24  # the two files' shortened stems still differ
    assert {s["meta"]["source_file"][-6:] for s in samples} == {"0.hdf5", "1.hdf5"}

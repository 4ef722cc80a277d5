"""Streaming stats.yaml: equal to numpy on the full arrays, The Well's layout, named errors."""

import h5py
import numpy as np
import pytest
import yaml

from data_pipelines.errors import DataError
from data_pipelines.stats import (
    RunningMoments,
    channel_stats,
    compute_stats,
    read_stats,
    write_stats,
)
from data_pipelines.synthetic import random_well_data
from data_pipelines.well_io import WellReader, list_split_files, write_well


def make_dataset(root, n_files=3, n_dims=2, offset=0.0, **kwargs):
    for i in range(n_files):
        data = random_well_data(n_dims=n_dims, seed=i, offset=offset, **kwargs)
        write_well(root / "data" / "train" / f"part{i}.hdf5", data)
    return root


def full_frames(root):
    """Every trajectory of the split as one float64 array [N, T, C, *space] — the numpy
    reference."""
    out = []
    for path in list_split_files(root, "train"):
        with WellReader(path) as r:
            out += [r.frames(t).astype(np.float64) for t in range(r.n_trajectories)]
            fields, dims = r.fields, r.spatial_dims
    return np.stack(out), fields, dims


@pytest.mark.parametrize("n_dims,offset", [(1, 0.0), (2, 1000.0), (3, -5.0)])
def test_stats_equal_numpy_on_full_array(tmp_path, n_dims, offset):
    root = make_dataset(
        tmp_path,
        n_files=3,
        n_dims=n_dims,
        offset=offset,
        n_traj=2,
        n_steps=7,
        size=4 if n_dims == 3 else 6,
    )
    # a tiny chunk forces many chunk merges and chunk borders inside each trajectory
    stats = compute_stats(root, max_chunk_values=50)
    x, fields, dims = full_frames(root)
    got = channel_stats(stats, fields, dims)
    axes = tuple(i for i in range(x.ndim) if i != 2)  # all but channels
    delta = np.diff(x, axis=1)
    want = {
        "mean": x.mean(axis=axes),
        "std": x.std(axis=axes),
        "rms": np.sqrt((x**2).mean(axis=axes)),
        "mean_delta": delta.mean(axis=axes),
        "std_delta": delta.std(axis=axes),
        "rms_delta": np.sqrt((delta**2).mean(axis=axes)),
    }
    for key, value in want.items():
        # mean_delta is ~0: compare relative to the delta scale rather than to itself
        scale = np.maximum(
            np.abs(value), want["std_delta" if key == "mean_delta" else "std"].max() * 1e-3
        )
        np.testing.assert_array_less(np.abs(got[key] - value) / scale, 1e-5, err_msg=key)
    # constant fields: zero deltas, absent from the *_delta keys as in The Well's files
    assert (
        "mask" not in stats["std_delta"]
        and "b" not in stats["mean_delta"]
        and "mask" in stats["std"]
    )


def test_stats_yaml_layout_matches_the_well(tmp_path):
    root = make_dataset(tmp_path, n_files=1, n_dims=2, n_traj=2, n_steps=4, size=4)
    stats = compute_stats(root)
    assert set(stats) == {"mean", "std", "rms", "mean_delta", "std_delta", "rms_delta"}
    assert isinstance(stats["mean"]["u"], float)
    assert isinstance(stats["std"]["v"], list) and len(stats["std"]["v"]) == 2
    assert np.asarray(stats["rms"]["s"]).shape == (2, 2)  # t2: nested n x n list
    path = write_stats(root, stats)
    assert path == root / "stats.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw == stats  # plain YAML floats and lists, no python tags
    assert read_stats(root) == stats
    assert sorted(p.name for p in root.iterdir()) == ["data", "stats.yaml"]  # no temp file left


def test_running_moments_merge_equals_one_pass():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 3)) * [1, 10, 0.1] + [1e4, 0, -3]
    acc = RunningMoments()
    for part in np.array_split(x, 7):
        acc.update(part)
    mean, std, rms = acc.finish()
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-9)
    np.testing.assert_allclose(rms, np.sqrt((x**2).mean(0)), rtol=1e-12)


def test_nonfinite_values_are_named(tmp_path):
    root = make_dataset(tmp_path, n_files=1, n_traj=2, n_steps=5, size=4)
    with h5py.File(root / "data" / "train" / "part0.hdf5", "r+") as f:
        f["t1_fields/v"][1, 3, 0, 0, 1] = np.nan
    with pytest.raises(
        DataError, match=r"part0\.hdf5: t1_fields/v: NaN/Inf at trajectory 1, time index 3"
    ):
        compute_stats(root, max_chunk_values=40)


def test_files_with_different_fields_are_refused(tmp_path):
    root = make_dataset(tmp_path, n_files=1, n_steps=4, size=4)
    write_well(
        root / "data" / "train" / "part1.hdf5", random_well_data(n_steps=4, size=4, orders=(0, 1))
    )
    with pytest.raises(DataError, match=r"part1\.hdf5: fields .* differ from part0\.hdf5"):
        compute_stats(root)


def test_read_stats_errors_name_file_and_key(tmp_path):
    with pytest.raises(DataError, match=r"stats\.yaml: stats file missing"):
        read_stats(tmp_path)
    path = tmp_path / "stats.yaml"
    path.write_text("mean: [unclosed\n")
    with pytest.raises(DataError, match=r"stats\.yaml: not valid YAML"):
        read_stats(tmp_path)
    good = {
        k: {"u": 1.0, "v": [1.0, 2.0]}
        for k in ("mean", "std", "rms", "mean_delta", "std_delta", "rms_delta")
    }
    path.write_text(yaml.safe_dump({k: v for k, v in good.items() if k != "rms_delta"}))
    with pytest.raises(DataError, match=r"stats\.yaml: key 'rms_delta' missing"):
        read_stats(tmp_path)
    path.write_text(yaml.safe_dump({**good, "std": {"u": "big"}}))
    with pytest.raises(DataError, match=r"stats\.yaml: std\.u: expected a number"):
        read_stats(tmp_path)
    path.write_text("!!python/object:os.system {}\n")
    with pytest.raises(DataError, match="not valid YAML"):
        read_stats(path)


def test_channel_stats_order_and_checks():
    stats = {
        k: {"p": 1.0, "vel": [2.0, 3.0], "tau": [[4.0, 5.0], [6.0, 7.0]], "const": 8.0}
        for k in ("mean", "std", "rms", "mean_delta", "std_delta", "rms_delta")
    }
    for k in ("mean_delta", "std_delta", "rms_delta"):
        del stats[k]["const"]
    out = channel_stats(stats, [("vel", 1), ("p", 0), ("tau", 2), ("const", 0)], ["x", "y"])
    # t0 fields first, then t1, t2
    np.testing.assert_array_equal(out["mean"], [1, 8, 2, 3, 4, 5, 6, 7])
    # constant field: zero delta
    np.testing.assert_array_equal(out["std_delta"], [1, 0, 2, 3, 4, 5, 6, 7])
    with pytest.raises(
        DataError, match=r"stats: mean\.vel has 2 values, expected 3 for a t1 field in 3D"
    ):
        channel_stats(stats, [("vel", 1)], ["x", "y", "z"])
    with pytest.raises(DataError, match=r"stats: mean\.rho missing"):
        channel_stats(stats, [("rho", 0)], ["x"])

"""Schema validation: each kind of problem is found and named; all problems are reported."""

import h5py
import numpy as np
import pytest

from data_pipelines.stats import compute_stats, write_stats
from data_pipelines.synthetic import random_well_data
from data_pipelines.validate import Problem, validate_paths
from data_pipelines.well_io import write_well


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "run.hdf5"
    write_well(path, random_well_data(n_dims=2, n_traj=3, n_steps=6, size=5))
    return path


def problems_after(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)
    return validate_paths([path])


def replace_dataset(f, location, data):
    attrs = dict(f[location].attrs)
    del f[location]
    ds = f.create_dataset(location, data=data)
    ds.attrs.update(attrs)


def one_line(problems):
    assert problems, "expected at least one problem"
    for p in problems:
        assert isinstance(p, Problem) and "\n" not in str(p) and str(p).startswith(p.file)
    return "\n".join(map(str, problems))


def test_valid_file_and_dataset_have_no_problems(tmp_path, good_file):
    assert validate_paths([good_file]) == []
    root = tmp_path / "ds"
    for split in ("train", "valid", "test"):
        write_well(root / "data" / split / "a.hdf5", random_well_data(n_steps=4, size=4, seed=1))
    write_stats(root, compute_stats(root))
    assert validate_paths([root, root / "data" / "train", root / "data" / "valid" / "a.hdf5"]) == []


def test_not_hdf5_and_truncated(tmp_path, good_file):
    junk = tmp_path / "junk.hdf5"
    junk.write_text("hello")
    truncated = tmp_path / "cut.hdf5"
    truncated.write_bytes(good_file.read_bytes()[:2000])
    text = one_line(validate_paths([junk, truncated, tmp_path / "absent.hdf5"]))
    assert "junk.hdf5: not a readable HDF5 file" in text
    assert "cut.hdf5: not a readable HDF5 file, or truncated" in text
    assert "absent.hdf5: path not found" in text


def test_truncated_data_region_is_reported(tmp_path):
    """A file cut inside its data (header intact) must give a named problem, not a traceback."""
    path = tmp_path / "big.hdf5"
    write_well(
        path, random_well_data(n_traj=2, n_steps=20, size=32, constant_fields=False, orders=(0,))
    )
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 20000])
    text = one_line(validate_paths([cut]))
    assert "cut.hdf5: not a readable HDF5 file, or truncated" in text


def test_missing_root_attrs_and_groups(good_file):
    def edit(f):
        del f.attrs["grid_type"]
        del f.attrs["dataset_name"]
        del f["scalars"]

    text = one_line(problems_after(good_file, edit))
    assert "/: root attribute 'grid_type' missing" in text
    assert "/: root attribute 'dataset_name' missing" in text
    assert "scalars: group missing" in text


def test_wrong_rank(good_file):
    rank4 = np.zeros((3, 6, 5, 6), "f4")  # the component axis is missing
    text = one_line(problems_after(good_file, lambda f: replace_dataset(f, "t1_fields/v", rank4)))
    assert "t1_fields/v: rank 4 (shape (3, 6, 5, 6)), expected 5 for a t1 field in 2D" in text


def test_time_length_mismatch(good_file):
    text = one_line(
        problems_after(good_file, lambda f: replace_dataset(f, "dimensions/time", np.arange(8.0)))
    )
    for field in ("t0_fields/u", "t1_fields/v", "t2_fields/s"):
        assert f"{field}: time length mismatch: 6 steps but dimensions/time has 8" in text
    assert "scalars/forcing: shape (6,), expected (8,)" in text


def test_inconsistent_n_trajectories(good_file):
    text = one_line(problems_after(good_file, lambda f: f.attrs.__setitem__("n_trajectories", 4)))
    assert (
        "t0_fields/u: first axis holds 3 trajectories but n_trajectories=4 (inconsistent n_trajectories)"
        in text
    )


def test_nonfinite_values_named_with_trajectory_and_time(good_file):
    def edit(f):
        f["t1_fields/v"][2, 4, 1, 1, 0] = np.inf
        f["t1_fields/v"][2, 1, 0, 0, 1] = np.nan
        f["t0_fields/u"][0, 5, 3, 3] = np.nan

    text = one_line(problems_after(good_file, edit))
    assert "t1_fields/v trajectory 2 time 1: NaN/Inf values at 2 time index(es): 1, 4" in text
    assert "t0_fields/u trajectory 0 time 5: NaN/Inf values at 1 time index(es): 5" in text


def test_unknown_bc_type_and_coords_mismatch(good_file):
    def edit(f):
        f["boundary_conditions/x_periodic"].attrs["bc_type"] = "SLIPPERY"
        replace_dataset(f, "dimensions/x", np.linspace(0, 1, 7))

    text = one_line(problems_after(good_file, edit))
    assert "boundary_conditions/x_periodic: unknown bc_type 'SLIPPERY'" in text
    assert (
        "t0_fields/u: coords length mismatch: axis 2 (x) has size 5 but dimensions/x has 7" in text
    )
    assert (
        "boundary_conditions/x_periodic/mask: shape (5,) does not match the coords lengths (7,)"
        in text
    )


def test_simulation_parameter_attr_missing(good_file):
    text = one_line(problems_after(good_file, lambda f: f.attrs.__delitem__("Re")))
    assert "/: simulation_parameters lists 'Re' but the root attribute 'Re' is missing" in text


def test_every_problem_is_reported(good_file):
    def edit(f):
        del f.attrs["grid_type"]
        f["boundary_conditions/x_periodic"].attrs["bc_type"] = "bogus"
        f["t2_fields/s"][0, 0, 0, 0, 0, 0] = np.nan
        # 2 trajectories, file says 3
        replace_dataset(f, "t0_fields/mask", np.zeros((2, 5, 6), "f4"))
        del f["t1_fields/b"].attrs["dim_varying"]
        del f.attrs["nu"]

    problems = problems_after(good_file, edit)
    text = one_line(problems)
    for expected in [
        "'grid_type' missing",
        "unknown bc_type 'bogus'",
        "t2_fields/s trajectory 0 time 0",
        "t0_fields/mask: first axis holds 2",
        "t1_fields/b: attribute 'dim_varying' missing",
        "lists 'nu'",
    ]:
        assert expected in text
    assert len(problems) == 6


def test_dataset_dir_checks_splits_consistency_and_stats(tmp_path):
    root = tmp_path / "ds"
    write_well(root / "data" / "train" / "a.hdf5", random_well_data(n_steps=4, size=4))
    # other resolution
    write_well(root / "data" / "valid" / "a.hdf5", random_well_data(n_steps=4, size=5))
    write_stats(root, compute_stats(root))
    stats_text = (root / "stats.yaml").read_text()
    (root / "stats.yaml").write_text(stats_text.replace("  u:", "  u_renamed:"))
    text = one_line(validate_paths([root]))
    assert "data/test: split folder missing" in text
    assert "valid/a.hdf5: spatial_shape (5, 6) differs from (4, 5) in a.hdf5" in text
    assert "stats.yaml: mean.u: missing for this field" in text
    (root / "stats.yaml").write_text("mean: {}\n")
    assert "stats.yaml: key 'std' missing" in one_line(validate_paths([root]))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a .hdf5 file, a split folder" in one_line(validate_paths([empty]))

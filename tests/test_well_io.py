"""The Well HDF5 writer/reader: round trips, lazy slices, atomic writes, named read errors."""

import pickle
import re

import h5py
import numpy as np
import pytest

from data_pipelines.errors import DataError
from data_pipelines.synthetic import random_well_data
from data_pipelines.well_format import Field
from data_pipelines.well_io import WellReader, list_split_files, read_well, write_well


@pytest.mark.parametrize("n_dims", [1, 2, 3])
def test_round_trip_all_features(tmp_path, n_dims):
    data = random_well_data(
        n_dims=n_dims, n_traj=2, n_steps=5, size=4 if n_dims == 3 else 6, seed=n_dims
    )
    path = tmp_path / "run.hdf5"
    write_well(path, data)
    back = read_well(path)

    assert back.dataset_name == data.dataset_name and back.spatial_dims == data.spatial_dims
    assert (
        back.n_trajectories == 2 and back.n_steps == 5 and back.spatial_shape == data.spatial_shape
    )
    np.testing.assert_array_equal(back.time, data.time)
    for d in data.spatial_dims:
        np.testing.assert_array_equal(back.coords[d], data.coords[d])
    assert [(f.name, f.order, f.time_varying, f.sample_varying) for f in back.fields] == sorted(
        [(f.name, f.order, f.time_varying, f.sample_varying) for f in data.fields],
        key=lambda t: t[1],
    )
    by_name = {f.name: f for f in back.fields}
    for f in data.fields:
        np.testing.assert_array_equal(by_name[f.name].data, f.data)
        assert by_name[f.name].data.dtype == f.data.dtype
    assert back.simulation_parameters == data.simulation_parameters
    # scalars as given, then the simulation parameters as constant scalars (The Well's convention)
    scalars = {s.name: s for s in back.scalars}
    assert list(scalars) == ["forcing", "seed_energy", "nu", "Re"]
    for s in data.scalars:
        np.testing.assert_array_equal(scalars[s.name].data, s.data)
        assert (scalars[s.name].time_varying, scalars[s.name].sample_varying) == (
            s.time_varying,
            s.sample_varying,
        )
    assert (
        float(scalars["nu"].data) == data.simulation_parameters["nu"]
        and not scalars["nu"].time_varying
    )
    bcs = {bc.name: bc for bc in back.boundary_conditions}
    assert bcs["x_periodic"].bc_type == "PERIODIC" and bcs["x_periodic"].associated_dims == ["x"]
    assert (
        bcs["x_periodic"].mask[0]
        and bcs["x_periodic"].mask[-1]
        and not bcs["x_periodic"].mask[1:-1].any()
    )
    wall = data.boundary_conditions[1]
    np.testing.assert_array_equal(bcs[wall.name].mask, wall.mask)
    assert bcs[wall.name].associated_fields == ["u"]
    # channels-first frames agree between the in-memory form and both read paths
    np.testing.assert_array_equal(back.frames(1, 1, 4), data.frames(1, 1, 4))
    with WellReader(path) as r:
        assert r.channel_names == data.channel_names
        np.testing.assert_array_equal(r.frames(1, 1, 4), data.frames(1, 1, 4))


def test_round_trip_is_idempotent(tmp_path):
    write_well(tmp_path / "a.hdf5", random_well_data(seed=3))
    first = read_well(tmp_path / "a.hdf5")
    write_well(tmp_path / "b.hdf5", first)
    second = read_well(tmp_path / "b.hdf5")
    assert [s.name for s in second.scalars] == [s.name for s in first.scalars]
    for a, b in zip(first.fields, second.fields):
        np.testing.assert_array_equal(a.data, b.data)


def test_reader_metadata_and_channel_layout(tmp_path):
    data = random_well_data(n_dims=2, n_traj=3, n_steps=7, size=5)
    write_well(tmp_path / "f.hdf5", data)
    with WellReader(tmp_path / "f.hdf5") as r:
        assert r.fields == [("u", 0), ("mask", 0), ("v", 1), ("b", 1), ("s", 2)]
        assert r.channel_names == [
            "u",
            "mask",
            "v_x",
            "v_y",
            "b_x",
            "b_y",
            "s_xx",
            "s_xy",
            "s_yx",
            "s_yy",
        ]
        assert (r.n_trajectories, r.n_steps, r.spatial_shape, r.n_spatial_dims) == (3, 7, (5, 6), 2)
        assert r.simulation_parameters == {"nu": 0.01, "Re": 100.0}
        x = r.frames(2, 2, 5)
        assert x.shape == (3, 10, 5, 6) and x.dtype == np.float32
        # components: v_y is v[..., 1]; s_xy is s[..., 0, 1]; constant fields broadcast over time
        v = data.fields[2].data
        np.testing.assert_array_equal(x[:, 3], v[2, 2:5, ..., 1])
        s = data.fields[3].data
        np.testing.assert_array_equal(x[:, 7], s[2, 2:5, ..., 0, 1])
        np.testing.assert_array_equal(x[:, 1], np.broadcast_to(data.fields[1].data[2], (3, 5, 6)))
        np.testing.assert_array_equal(
            x[:, 5], np.broadcast_to(data.fields[4].data[..., 1], (3, 5, 6))
        )


def test_lazy_slices_equal_full_read(tmp_path):
    write_well(tmp_path / "f.hdf5", random_well_data(n_dims=3, n_traj=2, n_steps=9, size=4))
    full = read_well(tmp_path / "f.hdf5")
    with WellReader(tmp_path / "f.hdf5") as r:
        whole = r.frames(1)
        np.testing.assert_array_equal(whole, full.frames(1))
        for start, stop in [(0, 1), (3, 7), (8, 9)]:
            np.testing.assert_array_equal(r.frames(1, start, stop), whole[start:stop])
        with pytest.raises(DataError, match=r"f\.hdf5: trajectory 2 out of range"):
            r.frames(2, 0, 1)
        with pytest.raises(DataError, match="time range 5:12"):
            r.frames(0, 5, 12)
        # a pickled reader (handed to a loader worker) reopens its file
        clone = pickle.loads(pickle.dumps(r))
        np.testing.assert_array_equal(clone.frames(0, 2, 4), r.frames(0, 2, 4))
        clone.close()


def test_reader_reads_only_the_requested_slice(tmp_path, monkeypatch):
    write_well(tmp_path / "f.hdf5", random_well_data(n_traj=2, n_steps=9, size=4))
    seen = []
    real = h5py.Dataset.__getitem__

    def recording(self, index):
        seen.append((self.name, index))
        return real(self, index)

    with WellReader(tmp_path / "f.hdf5") as r:
        monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
        r.frames(1, 3, 5)
    assert ("/t1_fields/v", (1, slice(3, 5))) in seen  # a hyperslab, not the whole dataset
    assert ("/t0_fields/mask", (1,)) in seen  # constant in time: one frame of trajectory 1
    # only b is stored once
    assert all(index != () for name, index in seen if name != "/t1_fields/b")


def test_reader_broadcasts_fields_constant_along_a_dimension(tmp_path):
    """The Well may store a field with dim_varying False along an axis (size 1 on disk)."""
    data = random_well_data(
        n_dims=2, n_traj=1, n_steps=3, size=4, constant_fields=False, orders=(0,)
    )
    path = tmp_path / "f.hdf5"
    write_well(path, data)
    profile = np.arange(4, dtype=np.float32).reshape(1, 4, 1)  # [traj, x, y=1]: varies in x only
    with h5py.File(path, "r+") as f:
        del f["t0_fields/u"]
        ds = f["t0_fields"].create_dataset("u", data=profile)
        ds.attrs["dim_varying"] = [True, False]
        ds.attrs["sample_varying"] = True
        ds.attrs["time_varying"] = False
    with WellReader(path) as r:
        x = r.frames(0, 0, 3)
    assert x.shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(x[2, 0], np.broadcast_to(profile[0], (4, 5)))


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "run.hdf5"
    write_well(path, random_well_data(seed=1))
    before = path.read_bytes()
    real = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        if name == "v":
            raise RuntimeError("disk full")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_well(path, random_well_data(seed=2))
    with pytest.raises(RuntimeError):
        write_well(tmp_path / "new.hdf5", random_well_data(seed=2))
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.hdf5"]  # no partial or temp file


def test_write_rejects_inconsistent_shapes(tmp_path):
    data = random_well_data(n_traj=2, n_steps=4, size=4)
    data.fields.append(Field("w", 1, np.zeros((2, 3, 4, 5, 2), np.float32)))  # 3 steps, time has 4
    with pytest.raises(
        DataError, match=r"t1_fields/w: shape \(2, 3, 4, 5, 2\), expected \(2, 4, 4, 5, 2\)"
    ):
        write_well(tmp_path / "bad.hdf5", data)
    assert not (tmp_path / "bad.hdf5").exists()


def test_read_errors_name_file_and_location(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(DataError, match=r"junk\.hdf5: not a readable HDF5 file"):
        WellReader(junk)

    good = tmp_path / "good.hdf5"
    write_well(good, random_well_data(n_traj=2, n_steps=4, size=16))
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"truncated\.hdf5"):
        read_well(truncated)

    for edit, pattern in [
        (lambda f: f.__delitem__("t1_fields"), r"t1_fields: missing"),
        (
            lambda f: f["t2_fields/s"].attrs.__delitem__("time_varying"),
            r"t2_fields/s: attribute 'time_varying'",
        ),
        (lambda f: f.attrs.__delitem__("n_trajectories"), r"/: attribute 'n_trajectories' missing"),
        (lambda f: f["dimensions"].__delitem__("y"), r"dimensions/y: missing"),
        (
            lambda f: f["t1_fields/v"].attrs.__setitem__("sample_varying", False),
            r"t1_fields/v: shape \(2, 4, ",
        ),
    ]:
        broken = tmp_path / "broken.hdf5"
        broken.write_bytes(good.read_bytes())
        with h5py.File(broken, "r+") as f:
            edit(f)
        with pytest.raises(DataError, match="^" + re.escape(f"{broken}: ") + pattern):
            read_well(broken)
    with pytest.raises(DataError, match="missing.hdf5: file not found"):
        WellReader(tmp_path / "missing.hdf5")


def test_list_split_files(tmp_path):
    with pytest.raises(DataError, match=r"data/train: split folder missing"):
        list_split_files(tmp_path, "train")
    (tmp_path / "data" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"data/train: no \.hdf5 files"):
        list_split_files(tmp_path, "train")
    for name in ["b.hdf5", "a.hdf5", "notes.txt", ".a.hdf5.x.tmp"]:
        (tmp_path / "data" / "train" / name).write_bytes(b"")
    assert [p.name for p in list_split_files(tmp_path, "train")] == ["a.hdf5", "b.hdf5"]

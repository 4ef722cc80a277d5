"""Conformance with the `the_well` package: we read its files, it reads ours (fields, BCs,
stats.yaml)."""

import h5py
import numpy as np
import pytest

from data_pipelines.stats import channel_stats, compute_stats, write_stats
from data_pipelines.synthetic import random_well_data
from data_pipelines.validate import validate_paths
from data_pipelines.well_format import BoundaryCondition
from data_pipelines.well_io import WellReader, read_well, write_well

the_well_data = pytest.importorskip("the_well.data")
from the_well.utils.dummy_data import write_dummy_data  # noqa: E402

N_IN, N_OUT = 3, 2


def test_we_read_the_wells_dummy_file(tmp_path):
    path = tmp_path / "dummy.hdf5"
    np.random.seed(0)
    write_dummy_data(str(path))
    assert validate_paths([path]) == []
    with h5py.File(path, "r") as f:
        constant = f["t0_fields/constant_field"][()]  # [traj, x, y]
        vector = f["t1_fields/field"][()]  # [traj, t, x, y, 2]
        scalar = f["scalars/time_varying_scalar"][()]
    with WellReader(path) as r:
        assert r.dataset_name == "dummy_dataset" and r.spatial_dims == ["x", "y"]
        assert r.fields == [("constant_field", 0), ("field", 1)]
        assert r.channel_names == ["constant_field", "field_x", "field_y"]
        assert r.simulation_parameters == {"a": 0.25, "b": 0.75}
        assert (r.n_trajectories, r.n_steps, r.spatial_shape) == (2, 10, (32, 32))
        x = r.frames(1, 2, 6)  # [4, 3, 32, 32]
    np.testing.assert_array_equal(x[:, 0], np.broadcast_to(constant[1], (4, 32, 32)))
    np.testing.assert_array_equal(np.moveaxis(x[:, 1:], 1, -1), vector[1, 2:6])
    data = read_well(path)
    np.testing.assert_array_equal(data.fields[1].data, vector)
    assert not data.fields[0].time_varying
    np.testing.assert_array_equal(
        {s.name: s for s in data.scalars}["time_varying_scalar"].data, scalar
    )
    assert [bc.bc_type for bc in data.boundary_conditions] == ["PERIODIC", "PERIODIC"]


def write_our_dataset(root, n_files=2):
    """2D, a t0 field and a t1 field, 3 trajectories per file, written by our writer."""
    for i in range(n_files):
        data = random_well_data(
            n_dims=2, n_traj=3, n_steps=8, size=6, seed=i, orders=(0, 1), constant_fields=False
        )
        data.boundary_conditions = [
            BoundaryCondition("x_periodic", "PERIODIC", ["x"]),
            BoundaryCondition("y_wall", "WALL", ["y"]),
        ]
        write_well(root / "data" / "train" / f"part{i}.hdf5", data)
    return root


def test_the_well_reads_our_files(tmp_path):
    root = write_our_dataset(tmp_path)
    split = root / "data" / "train"
    ds = the_well_data.WellDataset(
        path=str(split), n_steps_input=N_IN, n_steps_output=N_OUT, use_normalization=False
    )
    windows = 8 - N_IN - N_OUT + 1
    assert len(ds) == 2 * 3 * windows
    assert ds.metadata.field_names[0] == ["u"] and ds.metadata.field_names[1] == ["v_x", "v_y"]
    # parameters as constant scalars
    assert sorted(ds.metadata.constant_scalar_names) == ["Re", "nu"]
    readers = [WellReader(p) for p in sorted(split.glob("*.hdf5"))]
    for index in [0, 1, windows - 1, windows, 3 * windows + 2, len(ds) - 1]:
        file_idx, local = divmod(index, 3 * windows)
        trajectory, start = divmod(local, windows)
        sample = ds[index]
        frames = readers[file_idx].frames(trajectory, start, start + N_IN + N_OUT)  # [T, C, H, W]
        channels_last = np.moveaxis(frames, 1, -1)
        np.testing.assert_array_equal(sample["input_fields"].numpy(), channels_last[:N_IN])
        np.testing.assert_array_equal(sample["output_fields"].numpy(), channels_last[N_IN:])
        # boundary codes per axis (the_well: WALL=0, OPEN=1, PERIODIC=2)
        np.testing.assert_array_equal(sample["boundary_conditions"].numpy(), [[2, 2], [0, 0]])
        np.testing.assert_allclose(
            sample["constant_scalars"].numpy(),
            [readers[file_idx].simulation_parameters[k] for k in ("nu", "Re")],
            rtol=1e-6,
        )
    for r in readers:
        r.close()


@pytest.mark.parametrize("norm", ["ZScoreNormalization", "RMSNormalization"])
def test_the_well_normalises_with_our_stats(tmp_path, norm):
    from the_well.data import normalization

    root = write_our_dataset(tmp_path)
    stats = compute_stats(root)
    write_stats(root, stats)
    ds = the_well_data.WellDataset(
        path=str(root),
        well_split_name="train",
        n_steps_input=N_IN,
        n_steps_output=N_OUT,
        use_normalization=True,
        normalization_type=getattr(normalization, norm),
    )
    with WellReader(root / "data" / "train" / "part1.hdf5") as r:
        frames = r.frames(2, 1, 1 + N_IN)
        per_channel = channel_stats(stats, r.fields, r.spatial_dims)
    sample = ds[3 * 4 + 2 * 4 + 1]  # file 1, trajectory 2, start 1
    if norm == "ZScoreNormalization":
        want = (frames - per_channel["mean"][:, None, None]) / per_channel["std"][:, None, None]
    else:
        want = frames / per_channel["rms"][:, None, None]
    np.testing.assert_allclose(
        sample["input_fields"].numpy(), np.moveaxis(want, 1, -1), rtol=1e-4, atol=1e-5
    )

"""bench/held_out_data.py: which training trajectories the transfer bench keeps, where the spare
ones go, and the errors that name the file when a split cannot be made."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.bench_module import load_bench


@pytest.fixture(scope="module")
def held_out():
    yield from load_bench("held_out_data")


def test_training_choice_spreads_over_files(held_out):
    assert held_out.training_choice([3, 3, 3, 3], 2) == [[0], [0], [], []]
    assert held_out.training_choice([1, 4], 3) == [[0], [0, 1]]
    assert held_out.training_choice([5], 2) == [[0, 1]]
    with pytest.raises(held_out.HeldOutDataError, match="has 1 trajectories; need 2"):
        held_out.training_choice([1], 2)


def test_training_subset_keeps_two_trajectories_and_moves_the_spare_ones_to_valid_and_test(
    held_out, tmp_path
):
    from data_pipelines.simulators import simulate_dataset
    from data_pipelines.well_io import list_split_files, read_well

    src = simulate_dataset(
        "burgers1d", tmp_path / "src", n_traj=5, n_steps=8, resolution=32, seed=0
    )  # 2 parameter sets x 3 training trajectories, 1 valid and 1 test each
    out = held_out.training_subset(Path(src), tmp_path / "subset", 2)
    kept = [read_well(f) for f in list_split_files(out, "train")]
    assert [d.n_trajectories for d in kept] == [1, 1]
    trains = [read_well(f) for f in list_split_files(src, "train")]
    assert [d.n_trajectories for d in trains] == [3, 3]
    np.testing.assert_array_equal(kept[0].frames(0), trains[0].frames(0))
    # the 2 spare training trajectories of each file: the first to valid, the second to test,
    # after the split's own trajectory
    for split, spare in (("valid", 1), ("test", 2)):
        own = [read_well(f) for f in list_split_files(src, split)]
        joined = [read_well(f) for f in list_split_files(out, split)]
        assert [f.name for f in list_split_files(out, split)] == [
            f.name for f in list_split_files(src, split)
        ]
        for o, j, t in zip(own, joined, trains):
            assert j.n_trajectories == 2 and j.simulation_parameters == o.simulation_parameters
            np.testing.assert_array_equal(j.frames(0), o.frames(0))
            np.testing.assert_array_equal(j.frames(1), t.frames(spare))
    assert not (out / "stats.yaml").exists()  # recomputed from the two trajectories


def test_join_trajectories_names_the_file_when_its_parts_differ(held_out, tmp_path):
    from data_pipelines.simulators import simulate_dataset
    from data_pipelines.well_io import list_split_files, read_well

    def valid_file(n_steps: int):
        src = simulate_dataset(
            "burgers1d", tmp_path / str(n_steps), n_traj=5, n_steps=n_steps, resolution=32, seed=0
        )
        return read_well(list_split_files(src, "valid")[0])

    a, b = valid_file(8), valid_file(6)  # same parameter set, different lengths
    with pytest.raises(held_out.HeldOutDataError, match="somewhere.hdf5: its splits' files differ"):
        held_out.join_trajectories([a, b], Path("somewhere.hdf5"))


def test_training_subset_names_the_dataset_when_it_has_too_few_trajectories(held_out, tmp_path):
    from data_pipelines.simulators import simulate_dataset

    src = simulate_dataset(
        "burgers1d", tmp_path / "src", n_traj=5, n_steps=8, resolution=32, seed=0
    )  # 6 training trajectories
    with pytest.raises(
        held_out.HeldOutDataError,
        match=re.escape(f"{src}: the training split has 6 trajectories; need 7"),
    ):
        held_out.training_subset(Path(src), tmp_path / "subset", 7)

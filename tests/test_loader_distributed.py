"""Two real gloo ranks read the same shard set: disjoint windows, and equal batch counts when
resampled."""

from __future__ import annotations

import json

import pytest

from data_pipelines.sharding import shard_datasets
from data_pipelines.shards import read_manifest
from tests.datagen import make_toy_dataset
from tests.harness import run_distributed


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_get_disjoint_windows_and_equal_batches(tmp_path):
    # 3 source files of unequal length → 3 shards of unequal size: ranks get 2 and 1 shards.
    ds = make_toy_dataset(tmp_path / "a", "alpha", n_files=1, n_traj=2, n_steps=14)
    ds2 = make_toy_dataset(tmp_path / "b", "beta", n_files=2, n_traj=1, n_steps=9, seed=1)
    shards = tmp_path / "shards"
    shard_datasets([ds, ds2], shards)
    manifest = read_manifest(shards)
    sizes = [s["n_samples"] for s in manifest["splits"]["train"]["shards"]]
    assert len(set(sizes)) > 1  # uneven on purpose

    result = run_distributed(["tests/loader_worker.py", shards, tmp_path], nproc=2, timeout=120)
    assert result.ok, result.describe()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    seq = [set(r["sequential"]["keys"]) for r in ranks]
    assert not seq[0] & seq[1]  # no window read by both ranks
    assert len(seq[0] | seq[1]) == manifest["splits"]["train"]["n_samples"]  # and none lost
    # why resampling exists
    assert ranks[0]["sequential"]["n_batches"] != ranks[1]["sequential"]["n_batches"]

    assert [r["resampled"]["n_batches"] for r in ranks] == [7, 7]
    assert ranks[0]["resampled"]["keys"] != ranks[1]["resampled"]["keys"]

"""bench/generalization.py's pure helpers (arguments, table, the training-loss reader): no training."""

from __future__ import annotations

import pytest

from tests.bench_module import load_bench


@pytest.fixture(scope="module")
def bench():
    yield from load_bench("generalization")


def test_sizes_are_sorted_and_too_small_sets_are_refused(bench, capsys):
    assert bench.parse_args(["--n-traj", "24,6"]).sizes == [6, 24]
    with pytest.raises(SystemExit):
        bench.parse_args(["--n-traj", "2,6"])
    assert "needs >= 3 trajectories" in capsys.readouterr().err


def test_final_loss_reads_the_last_logged_training_loss(bench, tmp_path):
    log = tmp_path / "logs" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("epoch,step,train/loss\n0,9,3.5\n0,19,\n0,29,2.25\n")
    assert bench.final_loss(tmp_path) == 2.25
    assert bench.final_loss(tmp_path / "none") is None


def test_table_has_a_row_per_size_and_split(bench):
    row = {f"{n}_{h}": 0.5 for n in bench.NAMES.values() for h in bench.HORIZONS}
    sizes = {"6": {"train_windows": 240, "final_loss": 0.8, "train": row, "test": row}}
    lines = bench.format_table(sizes).splitlines()
    assert len(lines) == 3 and lines[1].split()[:4] == ["6", "240", "0.800", "train"]

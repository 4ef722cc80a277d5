"""Export and model loading under faults: a full disk during ``export`` is one line and exit 2 with
the previous export intact and no staging left; a run whose newest checkpoint is truncated is loaded
from the one before with a warning naming both (export, rollout), and a truncated checkpoint named
by the user is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from physfm.cli import main
from physfm.core.checkpoint import load_safetensors
from physfm.core.run_info import RunInfo
from tests.faults.conftest import digest
from tests.faults.test_disk_full import error_line
from tests.rollout_fixtures import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_model(tmp_path_factory.mktemp("export_faults"))


def make_run(tiny: dict[str, Path], run: Path) -> dict[int, dict[str, torch.Tensor]]:
    """A run directory with checkpoints at steps 4 and 8 (different weights); returns each one's
    weights."""
    state, config = load_safetensors(tiny["export"])
    RunInfo.from_dict(config).write(run)
    weights = {}
    for step in (4, 8):
        weights[step] = {k: v + step for k, v in state.items()}
        ckpt = {
            "state_dict": {f"model.{k}": v for k, v in weights[step].items()},
            "global_step": step,
        }
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, run / "checkpoints" / f"step={step:07d}.ckpt")
    return weights


def test_export_on_a_full_disk(small_disk, tiny, capsys) -> None:
    out = small_disk.root / "export"
    assert main(["export", "--ckpt", str(tiny["export"]), "--out", str(out)]) == 0
    before = digest(out)
    capsys.readouterr()
    with small_disk.full(free_kb=8):  # the tiny model's weights are ~100 KB
        code = main(["export", "--ckpt", str(tiny["export"]), "--out", str(out)])
    line = error_line(capsys.readouterr().err, "export")
    assert code == 2 and str(out) in line and "previous version, if any, is intact" in line, line
    assert digest(out) == before
    assert sorted(p.name for p in small_disk.root.iterdir()) == ["export"]  # no staging left


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_is_named_and_the_one_before_used(
    tiny, tmp_path, capsys
) -> None:
    run = tmp_path / "run"
    weights = make_run(tiny, run)
    newest = run / "checkpoints" / "step=0000008.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    used = run / "checkpoints" / "step=0000004.ckpt"
    warning = f"physfm: warning: {newest} is incomplete or corrupt; using {used} (step 4) instead"

    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "export")]) == 0
    assert warning in capsys.readouterr().err
    state, _ = load_safetensors(tmp_path / "export")
    assert all(torch.equal(state[k], weights[4][k]) for k in weights[4])

    rollout = ["rollout", "--ckpt", str(run), "--data", str(tiny["shards"]), "--horizon", "1"]
    assert main([*rollout, "--split", "test", "--out", str(tmp_path / "rollout")]) == 0
    assert warning in capsys.readouterr().err
    assert json.loads((tmp_path / "rollout" / "metrics.json").read_text())

    # Named by the user, the truncated file is refused, not swapped for another.
    assert main(["export", "--ckpt", str(newest), "--out", str(tmp_path / "named")]) == 2
    err = capsys.readouterr().err
    assert f"physfm export: error: {newest}: incomplete or corrupt checkpoint file" in err, err
    assert not (tmp_path / "named").exists()

"""Checkpoint helpers: atomic writes, completeness, newest-complete lookup, pruning, safe loading,
safetensors export.  (ZeRO consolidation of real 2-rank checkpoints is in test_strategies.py.)"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from data_pipelines.atomic import publish_dir
from physfm.core.checkpoint import (
    COMPLETE_MARKER,
    CheckpointError,
    assert_checkpoint_safe,
    atomic_dir,
    atomic_file,
    atomic_torch_save,
    checkpoint_step,
    consolidate_state_dict,
    export_safetensors,
    find_latest_checkpoint,
    is_complete,
    load_safetensors,
    prune_checkpoints,
    safe_torch_load,
    write_complete_marker,
)


def test_atomic_file_leaves_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "state.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.txt"]  # no temp file left behind
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_dir_and_publish_replace_whole_directories(tmp_path: Path) -> None:
    final = tmp_path / "step=5.ckpt"
    with pytest.raises(RuntimeError), atomic_dir(final) as staging:
        (staging / "shard0.pt").write_text("x")
        raise RuntimeError("crash before all shards")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as staging:
        (staging / "shard0.pt").write_text("v1")
    assert is_complete(final) and (final / "shard0.pt").read_text() == "v1"
    staging = tmp_path / "step=5.ckpt.tmp"
    staging.mkdir()
    (staging / "shard0.pt").write_text("v2")
    publish_dir(staging, final)
    assert (final / "shard0.pt").read_text() == "v2" and not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=5.ckpt"]


def test_outputs_are_group_readable_under_umask_022(tmp_path: Path) -> None:
    """run.json, metrics.json, checkpoints and exports get the mode a plain write would give (0644
    under umask 022), not mkstemp's 0600: colleagues on a shared filesystem read them."""
    from data_pipelines.atomic import atomic_write_bytes, atomic_write_text
    from physfm.core.model_config import ModelConfig
    from physfm.core.run_info import RunInfo

    old = os.umask(0o022)
    try:
        RunInfo(
            "ar",
            ModelConfig(),
            ["a"],
            n_context_frames=1,
            n_frames=2,
            tokenizer="t",
            tokenizer_fingerprint="f",
        ).write(tmp_path / "run")
        atomic_write_text(tmp_path / "run" / "metrics.json", "{}")
        atomic_write_bytes(tmp_path / "run" / "blob.bin", b"x")
        atomic_torch_save({"w": torch.ones(1)}, tmp_path / "run" / "step=1.ckpt")
        export_safetensors({"w": torch.ones(2)}, {"n": 1}, tmp_path / "export")
        files = [*(tmp_path / "run").iterdir(), *(tmp_path / "export").iterdir()]
        assert {p.name for p in files} >= {
            "run.json",
            "metrics.json",
            "step=1.ckpt",
            "model.safetensors",
        }
        for path in files:
            assert path.stat().st_mode & 0o777 == 0o644, path
        assert (tmp_path / "export").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)


def test_disk_full_names_the_target_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    import errno

    from data_pipelines.atomic import DiskFullError, atomic_path, is_disk_full

    target = tmp_path / "metrics.json"
    target.write_text("old")
    with (
        pytest.raises(DiskFullError, match="metrics.json: not written, No space left") as info,
        atomic_path(target),
    ):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(info.value) and target.read_text() == "old"
    with (
        pytest.raises(CheckpointError, match="step=3.ckpt: not written"),
        atomic_file(tmp_path / "step=3.ckpt"),
    ):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_half_written_checkpoints_are_never_taken_for_whole(tmp_path: Path) -> None:
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "step=2.ckpt")
    whole_dir = tmp_path / "step=4.ckpt"
    whole_dir.mkdir()
    write_complete_marker(whole_dir, step=4)
    (tmp_path / "step=6.ckpt").mkdir()  # shards written, marker not yet: a crash during save
    (tmp_path / "step=7.ckpt.tmp").mkdir()  # staging directory of a crashed save
    atomic_torch_save({"w": torch.ones(1000)}, tmp_path / "full.bin")
    data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "step=8.ckpt").write_bytes(data[: len(data) // 2])  # truncated file
    assert is_complete(tmp_path / "step=2.ckpt") and is_complete(whole_dir)
    assert not is_complete(tmp_path / "step=6.ckpt") and not is_complete(tmp_path / "step=8.ckpt")
    assert find_latest_checkpoint(tmp_path) == whole_dir
    assert checkpoint_step(whole_dir) == 4
    assert find_latest_checkpoint(tmp_path / "missing") is None
    with pytest.raises(CheckpointError, match="step=8.ckpt"):
        consolidate_state_dict(tmp_path / "step=8.ckpt")
    with pytest.raises(CheckpointError, match="incomplete"):
        consolidate_state_dict(tmp_path / "step=6.ckpt")


def test_prune_keeps_last_k_and_removes_leftovers(tmp_path: Path) -> None:
    for step in (1, 2, 3, 10):  # step 10 sorts after 3 by step, not by name
        atomic_torch_save({"step": step}, tmp_path / f"step={step}.ckpt")
    (tmp_path / "step=11.ckpt.tmp").mkdir()  # staging dir of a crashed DeepSpeed save
    (tmp_path / ".step=12.ckpt.x1.tmp").write_text("half")  # temp file of a crashed atomic write
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=10.ckpt", "step=3.ckpt"]
    assert len(removed) == 4
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep_last=0)


class _Payload:
    """Pickles to a call of os.system: loading it with plain pickle would run a command."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.flag}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    flag = tmp_path / "pwned"
    hostile = tmp_path / "step=1.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(flag)}, hostile)
    with pytest.raises(CheckpointError, match="refused"):
        safe_torch_load(hostile)
    with pytest.raises(CheckpointError, match="refused"):
        consolidate_state_dict(hostile)
    shard_dir = tmp_path / "ds.ckpt" / "checkpoint"
    shard_dir.mkdir(parents=True)
    (shard_dir / "mp_rank_00_model_states.pt").write_bytes(hostile.read_bytes())
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt"):
        assert_checkpoint_safe(tmp_path / "ds.ckpt")
    assert not flag.exists()  # the payload never executed
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload(flag), protocol=2))  # not even a torch file
    with pytest.raises(CheckpointError):
        safe_torch_load(raw)
    assert not flag.exists()


def test_lightning_ckpt_file_consolidates(tmp_path: Path) -> None:
    path = tmp_path / "step=3.ckpt"
    state = {
        "model.w": torch.arange(4.0),
        "model.b": torch.ones(2, dtype=torch.bfloat16),
        "other.x": torch.ones(1),
    }
    atomic_torch_save({"state_dict": state, "global_step": 3}, path)
    merged = consolidate_state_dict(path, strip_prefix="model.")
    assert sorted(merged) == ["b", "w"] and merged["b"].dtype == torch.float32  # full fp32
    assert torch.equal(merged["w"], torch.arange(4.0))
    with pytest.raises(CheckpointError, match="prefix"):
        consolidate_state_dict(path, strip_prefix="missing.")


def test_export_roundtrip_with_tied_weights(tmp_path: Path) -> None:
    embed = torch.randn(5, 3)
    # tied: shared memory
    state = {"embed.weight": embed, "head.weight": embed, "norm.scale": torch.ones(3)}
    out = export_safetensors(state, {"n_layers": 2, "name": "tiny"}, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == [
        COMPLETE_MARKER,
        "config.json",
        "model.safetensors",
    ]
    loaded, config = load_safetensors(out)
    assert config == {"n_layers": 2, "name": "tiny"}
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert json.loads((out / "config.json").read_text())["n_layers"] == 2
    export_safetensors({"w": torch.zeros(1)}, {"v": 2}, out)  # re-export replaces the export whole
    assert list(load_safetensors(out)[0]) == ["w"]


def test_export_refuses_to_clobber_and_names_missing_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    with pytest.raises(CheckpointError, match="metrics.json"):
        export_safetensors({"w": torch.zeros(1)}, {}, run_dir)
    assert (run_dir / "metrics.json").exists()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_safetensors(run_dir)

"""Nothing left behind: the hidden ``.NAME.*.tmp`` staging of a ``data shard`` or ``export`` killed
mid-write is removed by the next write to the same place, and the staging of a writer still running
is not touched."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from data_pipelines.atomic import atomic_write_text, make_staging_dir
from physfm.cli import main
from tests.harness import REPO_ROOT, worker_env
from tests.rollout_fixtures import build_tiny_model


def killed_mid_write(patch: str, verb_args: list[str]) -> subprocess.CompletedProcess:
    """Run ``physfm VERB_ARGS`` in a child whose ``patch`` (Python) makes it SIGKILL itself
    mid-write."""
    code = textwrap.dedent(patch) + f"\nfrom physfm.cli import main\nmain({verb_args!r})\n"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def staging(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.glob(f".{name}.*.tmp"))


KILL_BEFORE_PUBLISH = """
import os, signal
import data_pipelines.atomic as atomic, data_pipelines.sharding as sharding

def publish_dir(staging, final):  # the staging is written in full: die before the rename
    os.kill(os.getpid(), signal.SIGKILL)

sharding.publish_dir = publish_dir
"""

KILL_IN_SAVE = """
import os, signal
import safetensors.torch

original = safetensors.torch.save_file

def save_file(tensors, filename, metadata=None):
    original(tensors, filename, metadata=metadata)
    os.kill(os.getpid(), signal.SIGKILL)

safetensors.torch.save_file = save_file
"""


@pytest.mark.slow
def test_a_killed_shard_run_leaves_staging_that_the_next_one_removes(
    toy_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    args = ["data", "shard", str(toy_dataset), "--out", str(out), "--workers", "1"]
    killed = killed_mid_write(KILL_BEFORE_PUBLISH, args)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(staging(tmp_path, "shards")) == 1 and not out.exists()
    assert main(args) == 0
    assert staging(tmp_path, "shards") == [] and (out / "manifest.json").is_file()


@pytest.mark.slow
def test_a_killed_export_leaves_staging_that_the_next_one_removes(tmp_path: Path) -> None:
    export = build_tiny_model(tmp_path / "m")["export"]
    out = tmp_path / "exported"
    args = ["export", "--ckpt", str(export), "--out", str(out)]
    killed = killed_mid_write(KILL_IN_SAVE, args)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(staging(tmp_path, "exported")) == 1 and not out.exists()
    assert main(args) == 0
    assert staging(tmp_path, "exported") == [] and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_running_writers_staging_is_left_alone(tmp_path: Path) -> None:
    code = (
        "import sys, time\nfrom data_pipelines.atomic import make_staging_dir\n"
        f"print(make_staging_dir({str(tmp_path / 'out')!r}), flush=True)\ntime.sleep(60)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=worker_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        theirs = Path(writer.stdout.readline().strip())
        assert theirs.is_dir()
        mine = make_staging_dir(tmp_path / "out")
        atomic_write_text(tmp_path / "out", "x")  # a file write to the same place cleans up too
        # a live writer's staging, and this process's own, stay
        assert theirs.is_dir() and mine.is_dir()
    finally:
        writer.kill()
        writer.wait()
    mine.rmdir()
    atomic_write_text(tmp_path / "out", "y")
    assert staging(tmp_path, "out") == []  # the dead writer's staging goes with the next write

"""``physfm corpus`` and ``physfm simulate --list``: system selection, size presets, resume/skip
logic, the per-dimensionality views, and a run killed at a random moment then finished by a
rerun."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipelines.corpus import SIZES, build_corpus, select_systems, system_plan
from data_pipelines.errors import DataError
from data_pipelines.simulators import SIMULATORS
from data_pipelines.validate import validate_paths

TWO_SYSTEMS = ["burgers1d", "wave2d"]  # the two fastest: one 1D, one 2D


def build(out: Path, lines: list[str], **kwargs) -> dict:
    return build_corpus(out, systems=TWO_SYSTEMS, size="tiny", log=lines.append, **kwargs)


def staging_left(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))]


def check_complete(out: Path) -> None:
    """Every system validates, the shard set holds both, and a loader reads each dimensionality's
    view."""
    from data_pipelines.loader import make_loader
    from data_pipelines.shards import read_manifest

    assert validate_paths([out / "systems" / name for name in TWO_SYSTEMS]) == []
    manifest = read_manifest(out / "shards")
    assert sorted(manifest["datasets"]) == sorted(TWO_SYSTEMS)
    assert manifest["dataset_weights"] == {"burgers1d": 0.5, "wave2d": 0.5}
    for view, name in (("shards-1d", "burgers1d"), ("shards-2d", "wave2d")):
        batch = next(iter(make_loader(str(out / view), "train", 2, num_workers=0)))
        assert batch["dataset"] == name and batch["input"].shape[1] == 4
    assert staging_left(out) == []


def test_select_systems_and_sizes():
    assert select_systems() == list(SIMULATORS)
    assert select_systems(["wave2d", "burgers1d"]) == ["burgers1d", "wave2d"]  # registry order
    assert "wave2d" not in select_systems(exclude=["wave2d"])
    with pytest.raises(DataError, match="--systems: unknown system.*lorenz.*built-in: burgers1d"):
        select_systems(["lorenz", "wave2d"])
    with pytest.raises(DataError, match="--exclude: unknown system.*nope"):
        select_systems(exclude=["nope"])
    with pytest.raises(DataError, match="no system left"):
        select_systems(["wave2d"], exclude=["wave2d"])
    for name, spec in SIMULATORS.items():
        default, tiny = system_plan(name, SIZES["default"], 0), system_plan(name, SIZES["tiny"], 0)
        assert (default["n_traj"], default["n_steps"], default["resolution"]) == (
            spec.n_traj,
            spec.n_steps,
            spec.resolution,
        )
        assert tiny["n_traj"] == 3 and 8 <= tiny["n_steps"] < spec.n_steps
        assert spec.min_resolution <= tiny["resolution"] <= spec.resolution
        assert tiny["resolution"] % 4 == 0 or tiny["resolution"] == spec.resolution
        assert tiny["params"] == default["params"]  # every regime stays in the smallest corpus


@pytest.mark.slow
def test_corpus_builds_then_skips_and_redoes_what_changed(tmp_path):
    out, lines = tmp_path / "corpus", []
    build(out, lines)
    check_complete(out)
    first_shards = (out / "shards" / "train" / "shard-000000.tar").stat().st_mtime_ns

    lines.clear()
    build(out, lines)  # nothing to do
    assert any("burgers1d: done in an earlier run, kept" in line for line in lines)
    assert any("wave2d: done in an earlier run, kept" in line for line in lines)
    assert any("already holds this corpus" in line for line in lines)
    assert (out / "shards" / "train" / "shard-000000.tar").stat().st_mtime_ns == first_shards

    # A system whose marker is missing or holds another plan is redone; leftovers of a killed run
    # go.
    (out / "done" / "wave2d.json").unlink()
    marker = out / "done" / "burgers1d.json"
    marker.write_text(
        json.dumps({"plan": {**json.loads(marker.read_text())["plan"], "n_traj": 99}})
    )
    (out / "systems" / ".wave2d.abc123.tmp").mkdir()
    (out / ".shards.abc123.tmp").mkdir()
    (out / "done" / ".wave2d.json.abc.tmp").write_text("{")
    lines.clear()
    build(out, lines)
    assert sum("removed" in line for line in lines) == 3
    assert any(line.startswith("wave2d: 3 traj") for line in lines)
    assert any(line.startswith("burgers1d: 3 traj") for line in lines)
    assert any(line.startswith("sharded 2 system(s)") for line in lines)
    check_complete(out)

    # A smaller selection reshards (only what was chosen) and drops the view of the missing
    # dimension.
    lines.clear()
    manifest = build_corpus(out, systems=["wave2d"], size="tiny", log=lines.append)
    assert list(manifest["datasets"]) == ["wave2d"] and not (out / "shards-1d").exists()


@pytest.mark.slow
def test_a_system_failing_validation_is_not_marked_done(tmp_path, monkeypatch):
    """The workers are forked, so they see the patched validator: wave2d fails, burgers1d is
    kept."""
    import data_pipelines.validate
    from data_pipelines.validate import Problem

    real = data_pipelines.validate.validate_paths

    def fail_wave2d(paths):
        if any(".wave2d." in str(p) for p in paths):
            return [
                Problem("wave2d.hdf5", "t0_fields/pressure", "non-finite value at time index 3")
            ]
        return real(paths)

    monkeypatch.setattr(data_pipelines.validate, "validate_paths", fail_wave2d)
    out = tmp_path / "corpus"
    with pytest.raises(
        DataError, match="wave2d: simulated data fails validation: .*pressure.*non-finite"
    ):
        build(out, [], workers=2)
    assert (out / "done" / "burgers1d.json").is_file() and not (
        out / "done" / "wave2d.json"
    ).exists()
    assert not (out / "systems" / "wave2d").exists() and not (out / "shards").exists()
    assert staging_left(out) == []
    monkeypatch.setattr(data_pipelines.validate, "validate_paths", real)
    lines = []
    build(out, lines)
    assert "burgers1d: done in an earlier run, kept" in lines
    check_complete(out)


def test_corpus_cli_errors(tmp_path, capsys):
    from physfm.cli import main

    assert main(["corpus", "--out", str(tmp_path / "c"), "--systems", "burgers1d,lorenz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown system(s) lorenz" in err and "navier_stokes2d" in err
    assert main(["corpus", "--out", str(tmp_path / "c"), "--size", "huge"]) == 2
    assert "--size 'huge': choose one of tiny, small, default, large" in capsys.readouterr().err


def test_simulate_list_shows_every_system(capsys):
    from physfm.cli import main

    assert main(["simulate", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["SYSTEM", "DIM", "FIELDS", "DEFAULT"]
    for name, spec in SIMULATORS.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert f"{spec.n_spatial_dims}D" in row and ",".join(spec.field_names) in row
        assert f"{spec.n_traj} traj x {spec.n_steps} frames" in row
        assert all(f"{k}=" in row for k in spec.default_params)
        assert spec.regimes, f"{name}: SystemSpec.regimes is empty"
        for regime in spec.regimes:
            assert f"regime: {regime}" in [line.strip() for line in lines]
    assert lines[-1].startswith(f"{len(SIMULATORS)} systems")
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--param-sweep" in help_text
    assert all(f"{name} " in help_text for name in SIMULATORS)


@pytest.mark.slow
def test_corpus_killed_at_random_moments_then_rerun(tmp_path):
    """SIGKILL the run (the parent only: its workers must die with it) at seeded random fractions of
    an uninterrupted run's time, each from an empty folder, then run it again: it completes,
    validates, and leaves no staging behind."""
    cmd = [sys.executable, "-m", "physfm.cli", "corpus", "--size", "tiny", "--workers", "2"]
    cmd += ["--systems", ",".join(TWO_SYSTEMS)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    subprocess.run(
        [*cmd, "--out", str(tmp_path / "reference")], env=env, check=True, capture_output=True
    )
    full_s = time.perf_counter() - start
    rng = random.Random(24)
    interrupted = 0
    for attempt in range(3):
        out = tmp_path / f"corpus{attempt}"
        proc = subprocess.Popen(
            [*cmd, "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(rng.uniform(0.1, 0.9) * full_s)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        interrupted += proc.returncode == -signal.SIGKILL
        done = subprocess.run(
            [*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        check_complete(out)
    assert interrupted, "no run was still going when killed: the delays missed"
    again = subprocess.run(
        [*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "already holds this corpus" in again.stdout


def test_system_strips_script(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "system_strips.py"
    module_spec = importlib.util.spec_from_file_location("system_strips", path)
    strips = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(strips)
    assert strips.main(["--out", str(tmp_path), "--systems", "burgers1d"]) == 0
    png = tmp_path / "systems" / "burgers1d.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 60 * 1024
    page = (tmp_path / "systems.md").read_text()
    for name, spec in SIMULATORS.items():
        assert f"![{name}](systems/{name}.png)" in page and all(r in page for r in spec.regimes)
    assert strips.main(["--out", str(tmp_path), "--systems", "lorenz"]) == 2


@pytest.mark.slow
def test_corpus_cpu_configs_pretrain_and_evaluate_every_2d_system(tmp_path, capsys):
    """The documented path (README "Corpus"): corpus → tokenizer → encode → pretrain → evaluate,
    with the two corpus_cpu configs and only size/step overrides; the report names every 2D system,
    and the mixed 1D + 2D shard set is refused with the one-line explanation."""
    from physfm.cli import main

    root = Path(__file__).resolve().parents[1]
    corpus = tmp_path / "corpus"
    build_corpus(
        corpus, systems=["burgers1d", "navier_stokes2d", "wave2d"], size="tiny", log=lambda _: None
    )
    tok, tokens, run, report = (tmp_path / n for n in ("tok", "tokens", "pre", "eval"))
    tok_cfg = str(root / "configs/tokenizer/corpus_cpu.yaml")
    quick = ["trainer.max_steps=4", "trainer.max_time_s=0", "trainer.wandb=false"]
    assert (
        main(["tokenizer", "train", "--config", tok_cfg, f"data.shards={corpus}/shards", *quick])
        == 2
    )
    assert "one tokenizer codes one dimensionality" in capsys.readouterr().err
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--config",
                tok_cfg,
                f"data.shards={corpus}/shards-2d",
                f"out={tok}",
                *quick,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "tokenizer",
                "encode",
                "--ckpt",
                str(tok),
                "--data",
                f"{corpus}/shards-2d",
                "--out",
                str(tokens),
            ]
        )
        == 0
    )
    pre = [
        f"data.tokens=[{tokens}]",
        f"tokenizer={tok}",
        f"out={run}",
        "trainer.max_steps=2",
        "trainer.max_time_s=0",
    ]
    pre += [
        "trainer.logger=none",
        "trainer.progress_bar=false",
        "trainer.val_every=2",
        "data.num_workers=0",
    ]
    assert main(["pretrain", "--config", str(root / "configs/pretrain/corpus_cpu.yaml"), *pre]) == 0
    argv = [
        "evaluate",
        "--ckpt",
        str(run),
        "--data",
        f"{corpus}/shards-2d",
        "--horizons",
        "1",
        "--out",
        str(report),
    ]
    assert main(argv) == 0
    text = (report / "report.md").read_text()
    assert "navier_stokes2d" in text and "wave2d" in text and "burgers1d" not in text


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(
    tmp_path: Path,
) -> None:
    from data_pipelines.corpus import LOCK_FILE, corpus_lock

    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, time; from data_pipelines.corpus import corpus_lock\n"
            f"with corpus_lock(pathlib.Path({str(tmp_path)!r})):\n"
            f"    pathlib.Path({str(ready)!r}).touch(); time.sleep(60)",
        ],
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        busy = "another `physfm corpus` run is writing here"
        with pytest.raises(DataError, match=busy), corpus_lock(tmp_path, wait_s=0.5):
            pass
    finally:
        holder.kill()  # kill -9: the kernel drops the lock
        holder.wait()
    with corpus_lock(tmp_path, wait_s=5.0):
        assert (tmp_path / LOCK_FILE).exists()

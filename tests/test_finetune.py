"""physfm finetune: unseen fields end to end (1D lifted onto a 2D tokenizer, 2D, and 3D on the 2D
tokenizer inflated), exact resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data_pipelines.config import ConfigError
from data_pipelines.errors import DataError
from physfm.core.checkpoint import safe_torch_load
from physfm.train.finetune import load_finetune_config, run_finetune
from tests.datagen import make_toy_dataset
from tests.harness import run_distributed
from tests.rollout_fixtures import build_tiny_model, write_wave_dataset

FAST = [
    "trainer.max_steps=6",
    "trainer.checkpoint_every=3",
    "trainer.keep_last=5",
    "data.batch_size=4",
    "finetune.tokenizer_steps=5",
    "finetune.eval_max_windows=4",
    "finetune.eval_horizons=[1,2]",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny (untrained) model + tokenizer that know one 2D dataset, "waves" (fields u, vel)."""
    return build_tiny_model(tmp_path_factory.mktemp("pre"))["export"]


def config(pretrained: Path, data: Path, out: Path, *extra: str):
    return load_finetune_config(
        "configs/finetune/tiny.yaml",
        [*FAST, f"finetune.init={pretrained}", f"finetune.data={data}", f"out={out}", *extra],
    )


@pytest.mark.slow
def test_unseen_2d_fields_end_to_end_with_scratch(pretrained, tmp_path):
    data = make_toy_dataset(tmp_path / "toy", "toy", n_steps=10)  # unseen dataset name, 16x16
    out = run_finetune(config(pretrained, data, tmp_path / "run", "finetune.compare_scratch=true"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset_names"] == ["waves", "toy"]  # the pretrained id kept, the new one appended
    assert m["steps"] == 6 and set(m["overall"]) == {
        "finetuned",
        "pretrained",
        "scratch",
        "persistence",
        "tokenizer_ceiling",
    }
    assert all(np.isfinite(v) and v > 0 for per in m["overall"].values() for v in per.values())
    assert (out / "vrmse_vs_horizon.png").stat().st_size > 0 and "| persistence |" in (
        out / "report.md"
    ).read_text()
    # The adapted tokenizer kept the pretrained dataset bit-identical and added the new one.
    from tokenizer.checkpoint import load_tokenizer

    base, adapted = (
        load_tokenizer(json.loads((pretrained / "config.json").read_text())["tokenizer"]),
        load_tokenizer(out / "tokenizer"),
    )
    assert set(adapted.datasets) == {"waves", "toy"}
    for key, value in base.state_dict().items():
        assert torch.equal(value, adapted.state_dict()[key]), key


@pytest.mark.slow
def test_a_conditional_tokenizer_is_adapted_with_skips_and_its_ceiling_is_bounded_by_persistence(
    tmp_path,
):
    from tokenizer.checkpoint import load_tokenizer

    pre = build_tiny_model(tmp_path / "pre", conditional=True, prediction="next_frame")["export"]
    data = make_toy_dataset(tmp_path / "toy", "toy", n_steps=10)
    runs = {}
    for mode in ("auto", "never"):  # the recipe's default, and the encoder's codes as they are
        out = run_finetune(config(pre, data, tmp_path / mode, f"finetune.skip_coding={mode}"))
        runs[mode] = json.loads((out / "metrics.json").read_text())["vrmse"]["toy"]
        assert load_tokenizer(out / "tokenizer").cfg.skip_coding is (mode == "auto")
    ceiling, persistence = (runs["auto"][k]["1"] for k in ("tokenizer_ceiling", "persistence"))
    assert ceiling <= persistence + 1e-6
    assert ceiling <= runs["never"]["tokenizer_ceiling"]["1"] + 1e-6
    assert runs["auto"]["persistence"] == runs["never"]["persistence"]


def test_skip_coding_always_refuses_a_plain_tokenizer(pretrained, tmp_path):
    data = make_toy_dataset(tmp_path / "toy", "toy", n_files=1)
    run = config(pretrained, data, tmp_path / "run", "finetune.skip_coding=always")
    with pytest.raises(ConfigError, match="finetune.skip_coding=always.*plain"):
        run_finetune(run)


@pytest.mark.slow
def test_1d_dataset_on_2d_model_is_lifted(pretrained, tmp_path):
    data = write_wave_dataset(tmp_path / "w1", "waves1d", n_dims=1, resolution=32)
    out = run_finetune(config(pretrained, data, tmp_path / "run", "finetune.mode=freeze"))
    m = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    # lifted over a y axis of 4 cells
    assert manifest["datasets"]["waves1d"]["spatial_shape"] == [32, 4]
    assert manifest["datasets"]["waves1d"]["channel_names"] == ["u", "vel_x"]
    # freeze mode froze blocks
    assert m["trainable_params"]["trainable"] < m["trainable_params"]["total"]
    assert m["overall"]["finetuned"]["1"] > 0


@pytest.mark.slow
def test_3d_dataset_on_2d_model_inflates_the_tokenizer(pretrained, tmp_path):
    data = write_wave_dataset(tmp_path / "w3", "waves3d", n_dims=3, resolution=8)
    out = run_finetune(config(pretrained, data, tmp_path / "run"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["datasets"] == ["waves3d"] and m["n_windows"]["waves3d"] > 0
    scores = m["vrmse"]["waves3d"]
    assert all(np.isfinite(v) and v > 0 for v in scores["finetuned"].values())
    assert np.isfinite(scores["pretrained"]["1"]) and np.isfinite(scores["tokenizer_ceiling"]["1"])
    # the AR model reads the 3D token grid (8^3 cells at 4x); its rotary gained the z axis
    model = json.loads((out / "run.json").read_text())["model"]
    assert model["grid_shape"] == [2, 2, 2] and model["n_spatial_dims"] == 3
    # the new stem/head sit on the 2D trunk inflated to 3D; finetune.tokenizer_trunk=auto trained
    # that trunk with them (it codes no pretrained dataset now), the known dataset's stem stayed
    from tokenizer.checkpoint import load_tokenizer
    from tokenizer.inflate import inflate_tokenizer

    adapted = load_tokenizer(out / "tokenizer")
    assert adapted.cfg.n_spatial_dims == 3 and set(adapted.datasets) == {"waves", "waves3d"}
    base = load_tokenizer(json.loads((pretrained / "config.json").read_text())["tokenizer"])
    inflated = inflate_tokenizer(base, 3)
    trunk = {id(p) for p in inflated.trunk_parameters()}
    names = {n for n, p in inflated.named_parameters() if id(p) in trunk}
    after = adapted.state_dict()
    key = inflated._key("waves")
    known = [k for k in inflated.state_dict() if k.startswith((f"stems.{key}.", f"heads.{key}."))]
    assert known and all(torch.equal(inflated.state_dict()[k], after[k]) for k in known)
    assert any(not torch.equal(inflated.state_dict()[k], after[k]) for k in names)


@pytest.mark.slow
def test_2d_dataset_on_1d_model_inflates_the_tokenizer(tmp_path):
    pretrained_1d = build_tiny_model(tmp_path / "pre1d", n_dims=1)["export"]
    data = write_wave_dataset(tmp_path / "w2", "waves2d", n_dims=2, resolution=8)
    out = run_finetune(config(pretrained_1d, data, tmp_path / "run"))
    scores = json.loads((out / "metrics.json").read_text())["vrmse"]["waves2d"]
    assert all(np.isfinite(v) and v > 0 for v in scores["finetuned"].values())
    model = json.loads((out / "run.json").read_text())["model"]
    assert model["grid_shape"] == [2, 2] and model["n_spatial_dims"] == 2
    assert (
        json.loads((out / "tokenizer_inflated" / "tokenizer.json").read_text())["model"][
            "n_spatial_dims"
        ]
        == 2
    )


@pytest.mark.slow
def test_resumed_lora_finetune_matches_uninterrupted(pretrained, tmp_path):
    data = make_toy_dataset(tmp_path / "toy", "toy", n_steps=10)
    full = run_finetune(config(pretrained, data, tmp_path / "full", "finetune.mode=lora"))
    resumed = tmp_path / "resumed"
    shutil.copytree(
        full, resumed, ignore=shutil.ignore_patterns("step=0000006.ckpt", "model*", "metrics.json")
    )
    run_finetune(config(pretrained, data, resumed, "finetune.mode=lora"))
    assert json.loads((resumed / "metrics.json").read_text())["train"]["resumed_from"].endswith(
        "step=0000003.ckpt"
    )
    a = safe_torch_load(full / "checkpoints" / "step=0000006.ckpt")["state_dict"]
    b = safe_torch_load(resumed / "checkpoints" / "step=0000006.ckpt")["state_dict"]
    assert any(k.endswith("lora_a") for k in a) and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_deepspeed_zero2_finetune_with_scratch(pretrained, tmp_path):
    """Both ranks run the verb; rank 0 alone shards, adapts the tokenizer and scores; both train
    twice."""
    data = make_toy_dataset(tmp_path / "toy", "toy", n_steps=10)
    out = tmp_path / "ds"
    args = [
        "-m",
        "physfm.cli",
        "finetune",
        "--config",
        "configs/finetune/tiny.yaml",
        "--ckpt",
        str(pretrained),
        "--data",
        str(data),
        "--out",
        str(out),
        "--compare-scratch",
        *FAST,
        "trainer.checkpoint_every=6",
        "strategy.name=deepspeed",
        "strategy.zero_stage=2",
        "strategy.accelerator=cpu",
        "strategy.process_group_backend=gloo",
    ]
    result = run_distributed(args, nproc=2, timeout=300)
    assert result.ok, result.describe()
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 6 and m["scratch_train"]["steps"] == 6
    assert {"finetuned", "scratch", "persistence"} <= set(m["overall"])
    for run in (out, out / "scratch"):  # one ZeRO optimizer shard per rank, in both trainings
        assert len(list((run / "checkpoints" / "step=0000006.ckpt").rglob("*optim_states.pt"))) == 2
    assert json.loads((out / ".prepared.json").read_text())["result"]["datasets"] == ["toy"]
    assert result.stdout.count("run directory:") == 1  # rank 0 reports; rank 1 returns quietly


def test_rank_one_stops_with_rank_zeros_error(tmp_path, monkeypatch):
    from physfm.core.checkpoint import atomic_write_text
    from physfm.train.distributed import launch_id
    from physfm.train.finetune import PREPARED, prepare_on_rank_zero

    monkeypatch.setenv("RANK", "1")
    with pytest.raises(DataError, match="waited 1 s"):  # nothing from rank 0
        prepare_on_rank_zero(tmp_path, lambda: {}, timeout_s=1)
    atomic_write_text(
        tmp_path / PREPARED, json.dumps({"launch": "an earlier launch", "result": {"old": 1}})
    )
    with pytest.raises(DataError, match="waited 1 s"):  # a file an earlier launch left is not taken
        prepare_on_rank_zero(tmp_path, lambda: {}, timeout_s=1)
    atomic_write_text(
        tmp_path / PREPARED,
        json.dumps({"launch": launch_id(), "error": "DataError: bad.hdf5: NaN"}),
    )
    with pytest.raises(
        DataError, match="rank 0 failed to prepare the fine-tune data: DataError: bad.hdf5: NaN"
    ):
        prepare_on_rank_zero(tmp_path, lambda: {}, timeout_s=5)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = {}
    result = prepare_on_rank_zero(
        tmp_path, lambda: seen.update(ws="WORLD_SIZE" in os.environ) or {"ok": True}
    )
    assert result == {"ok": True} and seen == {"ws": False}  # rank 0 prepares as a single process
    assert os.environ["WORLD_SIZE"] == "2"  # and the launcher's variables come back


def test_a_three_axis_model_reads_a_3d_grid_as_its_2d_one_plus_depth():
    """What the rotary carries from 2D to 3D (physfm.models.trunk.with_spatial_axes): a model with
    three rotary axes scores a 2D grid as the same grid one cell deep, so the time/x/y pairs mean on
    a 3D grid what they meant in 2D pretraining; a model with two axes gains the third."""
    from physfm.models.trunk import rope_pair_axes, with_spatial_axes
    from tests.tiny_model import tiny_ar_model, tiny_model_config

    model = tiny_ar_model(n_spatial_dims=3)
    assert with_spatial_axes(model.config, 3) is model.config
    idx, ds = torch.randint(0, 16, (2, 3 * 16)), torch.zeros(2, dtype=torch.long)
    flat, _ = model(idx, (4, 4), ds)
    deep, _ = model(idx, (4, 4, 1), ds)
    torch.testing.assert_close(flat, deep)
    grown = with_spatial_axes(tiny_model_config(n_spatial_dims=2), 3)
    assert grown.n_spatial_dims == 3 and set(rope_pair_axes(grown).tolist()) == {0, 1, 2, 3}


def test_data_with_fewer_axes_than_the_tokenizer_is_a_named_error(tmp_path):
    from physfm.train.finetune_data import prepare_shards

    data = write_wave_dataset(tmp_path / "w2", "waves", n_dims=2, resolution=8)
    with pytest.raises(DataError, match=r"w2: a 2D dataset; the pretrained tokenizer is 3D"):
        prepare_shards(str(data), tmp_path / "run", 2, 1, tokenizer_dims=3, lift=4)
    shards, manifest = prepare_shards(str(data), tmp_path / "run", 2, 1, tokenizer_dims=1, lift=4)
    assert tuple(manifest.datasets["waves"].spatial_shape) == (
        8,
        8,
    )  # kept 2D: the 1D tokenizer inflates


def test_wrong_layout_is_a_named_error(pretrained, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.txt").write_text("not a dataset")
    with pytest.raises(DataError, match="not a The Well dataset directory"):
        run_finetune(config(pretrained, bad, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_train_split_is_a_named_error(pretrained, tmp_path):
    data = make_toy_dataset(tmp_path / "toy", "toy", n_files=1, splits=("valid", "test"))
    with pytest.raises(DataError, match="no train split"):
        run_finetune(config(pretrained, data, tmp_path / "run"))


def test_nan_field_is_a_named_error(pretrained, tmp_path):
    data = make_toy_dataset(tmp_path / "toy", "toy", n_files=1)
    path = data / "data" / "train" / "toy_0.hdf5"
    with h5py.File(path, "r+") as f:
        f["t0_fields/u"][1, 3, 2, 2] = np.nan
    with pytest.raises(DataError, match=r"toy_0\.hdf5.*u"):
        run_finetune(config(pretrained, data, tmp_path / "run"))


def test_cli_reports_bad_input_in_one_line(pretrained, tmp_path, capsys):
    from physfm.cli import main

    code = main(
        [
            "finetune",
            "--config",
            "configs/finetune/tiny.yaml",
            "--from",
            str(pretrained),
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2 and "physfm finetune: error:" in capsys.readouterr().err


def test_lora_merge_reproduces_adapted_forward():
    from physfm.models.ar import PhysicsTransformer
    from physfm.models.lora import add_lora, merge_lora_state
    from tests.tiny_model import tiny_model_config

    torch.manual_seed(0)
    cfg = tiny_model_config(max_frames=2, grid_shape=[2, 2], n_spatial_dims=3)
    model = PhysicsTransformer(cfg)
    add_lora(model, rank=4, alpha=8.0)
    for name, p in model.named_parameters():
        if name.endswith("lora_b"):
            torch.nn.init.normal_(p, std=0.1)  # as after some training
    idx, ids = torch.randint(0, 16, (2, 8)), torch.tensor([0, 1])
    plain = PhysicsTransformer(cfg)
    plain.load_state_dict(merge_lora_state(model.state_dict(), 8.0 / 4))
    torch.testing.assert_close(
        plain(idx, (2, 2), ids)[0], model(idx, (2, 2), ids)[0], atol=1e-5, rtol=1e-4
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.endswith(("lora_a", "lora_b")) or n.startswith("dataset_embedding") for n in trainable
    )

"""Forecasting levers end to end: conditional tokens and next-frame prediction through every verb, and the
baselines they are scored against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from physfm.cli import main as physfm
from physfm.eval.windows import evaluation_windows
from physfm.inference import PhysicsModel
from tests.rollout_fixtures import build_tiny_model


@pytest.fixture(scope="module")
def conditional(tmp_path_factory) -> dict[str, Path]:
    """A tiny random conditional tokenizer + next-frame AR export over one 2D dataset ("waves")."""
    return build_tiny_model(tmp_path_factory.mktemp("cond"), conditional=True, prediction="next_frame")


def test_conditional_rollout_starts_from_the_true_last_frame(conditional):
    """An AR model that predicts only "no change" tokens forecasts persistence exactly; copy-tokens and the
    ceiling decode given true frames."""
    pm = PhysicsModel.from_pretrained(conditional["export"], refiner=False)
    assert pm.conditional
    batch = next(iter(evaluation_windows(conditional["shards"], "test", 3, max_windows=2)))
    no_change = pm.tokenizer.no_change_id
    pm.generate_tokens = lambda ids, n, *a, **k: torch.full((ids.shape[0], n, *ids.shape[2:]), no_change)
    pred = pm.rollout(batch.context, 3, "waves")
    torch.testing.assert_close(pred, batch.context[:, -1:].expand_as(pred), rtol=1e-5, atol=1e-5)
    ceiling = pm.tokenizer_ceiling(batch.context, batch.truth, "waves")
    copy = pm.copy_tokens(batch.context, 3, "waves")
    assert ceiling.shape == copy.shape == batch.truth.shape


@pytest.mark.slow
def test_every_verb_runs_on_a_conditional_tokenizer(conditional, tmp_path, capsys):
    """tokenizer encode → pretrain (next-frame) → rollout, evaluate, refine, export, probe, steer, finetune."""
    shards, tok = str(conditional["shards"]), str(conditional["tokenizer"])
    tokens, run = tmp_path / "tokens", tmp_path / "run"

    def ok(*args: str) -> None:
        assert physfm(list(args)) == 0, capsys.readouterr().err

    ok("tokenizer", "encode", "--ckpt", tok, "--data", shards, "--out", str(tokens))
    assert json.loads((tokens / "manifest.json").read_text())["tokenizer"]["conditional"] is True
    model = ["model.vocab_size=16", "model.grid_shape=[4,4]", "model.n_layer=2", "model.d_model=32"]
    model += ["model.n_head=2", "model.n_kv_head=1", "model.ffn_hidden=64", "model.prediction=next_frame"]
    ok(
        "pretrain",
        "--config",
        "configs/pretrain/tiny.yaml",
        *model,
        f"data.tokens=[{tokens}]",
        f"tokenizer={tok}",
        f"out={run}",
        "trainer.max_steps=4",
        "trainer.logger=csv",
        "trainer.progress_bar=false",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.val_batches=1",
        "optim.warmup_steps=1",
    )
    common = ["--ckpt", str(run), "--data", shards]
    ok("refine", *common, "train.steps=3", "data.n_windows=2", "data.rollout_steps=2", "model.width=8")
    ok("rollout", *common, "--horizon", "3", "--max-windows", "2", "--out", str(tmp_path / "ro"))
    ok("evaluate", *common, "--horizons", "1,3", "--max-windows", "2", "--out", str(tmp_path / "ev"))
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    improves = json.loads((run / "refiner" / "refiner.json").read_text())["improves"]
    assert metrics["default_method"] == ("ar_refined" if improves else "ar")  # refined only where it helped
    assert set(metrics["vrmse"]["waves"]["mean"]) >= {"ar", "ar_refined", "persistence", "copy_tokens"}
    ok("export", "--ckpt", str(run), "--out", str(tmp_path / "export"))
    ok(
        "probe",
        *common[:2],
        "--data",
        str(tokens),
        "--target",
        "speed",
        "--split",
        "train,valid,test",
        "--out",
        str(tmp_path / "probe"),
    )
    direction = tmp_path / "speed.safetensors"
    ok(
        "steer",
        "direction",
        *common[:2],
        "--data",
        str(tokens),
        "--feature",
        "speed>=0.45",
        "--control",
        "speed<0.35",
        "--layer",
        "1",
        "--split",
        "train,test",
        "--out",
        str(direction),
    )
    ok(
        "steer",
        "rollout",
        *common,
        "--direction",
        str(direction),
        "--alpha=0,1",
        "--horizon",
        "2",
        "--max-windows",
        "2",
        "--out",
        str(tmp_path / "steer"),
    )
    finetune_data = conditional["data"]
    ok(
        "finetune",
        "--config",
        "configs/finetune/tiny.yaml",
        "--ckpt",
        str(run),
        "--data",
        str(finetune_data),
        f"out={tmp_path / 'ft'}",
        "trainer.max_steps=2",
        "data.batch_size=4",
        "finetune.tokenizer_steps=2",
        "finetune.eval_max_windows=2",
        "finetune.eval_horizons=[1]",
    )

"""Forecasting levers end to end: conditional tokens and next-frame prediction through every verb,
and the baselines they are scored against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_pipelines.errors import InputError
from physfm.cli import main as physfm
from physfm.eval.windows import evaluation_windows
from physfm.inference import PhysicsModel
from tests.rollout_fixtures import build_tiny_model


@pytest.fixture(scope="module")
def conditional(tmp_path_factory) -> dict[str, Path]:
    """A tiny random conditional tokenizer + next-frame AR export over one 2D dataset ("waves")."""
    return build_tiny_model(
        tmp_path_factory.mktemp("cond"), conditional=True, prediction="next_frame"
    )


def test_conditional_rollout_starts_from_the_true_last_frame(conditional):
    """An AR model that predicts only "no change" tokens forecasts persistence exactly; copy-tokens
    and the ceiling decode given true frames."""
    pm = PhysicsModel.from_pretrained(conditional["export"], refiner=False)
    assert pm.conditional
    batch = next(iter(evaluation_windows(conditional["shards"], "test", 3, max_windows=2)))
    no_change = pm.tokenizer.no_change_id
    pm.generate_tokens = lambda ids, n, *a, **k: torch.full(
        (ids.shape[0], n, *ids.shape[2:]), no_change
    )
    pred = pm.rollout(batch.context, 3, "waves")
    torch.testing.assert_close(pred, batch.context[:, -1:].expand_as(pred), rtol=1e-5, atol=1e-5)
    ceiling = pm.tokenizer_ceiling(batch.context, batch.truth, "waves")
    copy = pm.copy_tokens(batch.context, 3, "waves")
    assert ceiling.shape == copy.shape == batch.truth.shape


@pytest.mark.slow
def test_every_verb_runs_on_a_conditional_tokenizer(conditional, tmp_path, capsys):
    """tokenizer encode → pretrain (next-frame) → rollout, evaluate, refine, export, probe, steer,
    finetune."""
    shards, tok = str(conditional["shards"]), str(conditional["tokenizer"])
    tokens, run = tmp_path / "tokens", tmp_path / "run"

    def ok(*args: str) -> None:
        assert physfm(list(args)) == 0, capsys.readouterr().err

    ok("tokenizer", "encode", "--ckpt", tok, "--data", shards, "--out", str(tokens))
    assert json.loads((tokens / "manifest.json").read_text())["tokenizer"]["conditional"] is True
    model = [
        "model.vocab_size=16",
        "model.fsq_levels=[16]",
        "model.grid_shape=[4,4]",
        "model.n_layer=2",
        "model.d_model=32",
    ]
    model += [
        "model.n_head=2",
        "model.n_kv_head=1",
        "model.ffn_hidden=64",
        "model.prediction=next_frame",
    ]
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
    ok(
        "refine",
        *common,
        "train.steps=3",
        "data.n_windows=2",
        "data.rollout_steps=2",
        "model.width=8",
    )
    ok(
        "rollout",
        *common,
        "--horizon",
        "3",
        "--max-windows",
        "2",
        "--dtype",
        "bfloat16",
        "--out",
        str(tmp_path / "ro"),
    )
    ok(
        "evaluate",
        *common,
        "--horizons",
        "1,3",
        "--max-windows",
        "2",
        "--out",
        str(tmp_path / "ev"),
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    improves = json.loads((run / "refiner" / "refiner.json").read_text())["improves"]
    # refined only where it helped
    assert metrics["default_method"] == ("ar_refined" if improves else "ar")
    assert set(metrics["vrmse"]["waves"]["mean"]) >= {
        "ar",
        "ar_refined",
        "persistence",
        "copy_tokens",
    }
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
    steered = json.loads((tmp_path / "steer" / "metrics.json").read_text())
    # the field-space rollout with α = 0 hooks is the plain rollout
    assert steered["alpha0_identical"] is True
    assert len(steered["curves"][f"probe {steered['target']}"]["mean"]) == 2
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


@pytest.mark.parametrize("conditional_tokens,n_context", [(False, 3), (True, 3), (True, 1)])
def test_next_frame_loss_skips_the_step_from_a_key_frame(conditional_tokens, n_context):
    """Conditional token windows open with a key frame: the change tokens of frame 1 follow absolute
    codes, a step no rollout from two or more context frames takes, so only frames >= 2 carry loss;
    plain tokens, and a one-frame context (whose every rollout step starts from a key frame), learn
    every frame after the first."""
    from physfm.models.ar import IGNORE_INDEX
    from physfm.models.trunk import ModelConfig
    from physfm.train.module import ARModule

    model = dict(
        vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, d_model=16, ffn_hidden=32, max_frames=4
    )
    module = ARModule(
        ModelConfig(**model, grid_shape=[2, 2], n_spatial_dims=2, prediction="next_frame"),
        {"lr": 1e-3},
        ["waves"],
        n_context_frames=n_context,
        max_steps=1,
        conditional_tokens=conditional_tokens,
    )
    tokens = torch.randint(0, 32, (2, 4, 2, 2), generator=torch.Generator().manual_seed(0))
    loss = module.loss({"tokens": tokens, "dataset": "waves"})
    idx = tokens.reshape(2, -1)
    targets = idx.clone()
    targets[:, : (2 if conditional_tokens and n_context > 1 else 1) * 4] = IGNORE_INDEX
    _, expected = module.model(idx, (2, 2), torch.zeros(2, dtype=torch.long), targets=targets)
    torch.testing.assert_close(loss, expected)


def test_bfloat16_rollout_is_close_to_float32(conditional):
    """``dtype="bfloat16"`` (rollout/evaluate --dtype) runs the transformer in bf16: same shapes,
    forecasts close to float32's (greedy argmax may round a near-tie the other way), steering hooks
    still apply."""
    from physfm.interp.hooks import add_to

    batch = next(iter(evaluation_windows(conditional["shards"], "test", 2, max_windows=2)))
    fp32 = PhysicsModel.from_pretrained(conditional["export"], refiner=False)
    bf16 = PhysicsModel.from_pretrained(conditional["export"], refiner=False, dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    a, b = fp32.rollout(batch.context, 2, "waves"), bf16.rollout(batch.context, 2, "waves")
    assert a.shape == b.shape and b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().mean() < 0.1 * a.abs().mean() + 1e-6
    # a float32 direction
    with add_to(bf16.model, "blocks.0.resid", lambda h, pos: torch.ones(h.shape[-1])):
        assert torch.isfinite(bf16.rollout(batch.context, 2, "waves")).all()
    with pytest.raises(InputError, match="dtype 'float16': expected one of float32, bfloat16"):
        PhysicsModel.from_pretrained(conditional["export"], dtype="float16")


@pytest.mark.slow
def test_next_frame_model_after_100_steps_is_near_copy_tokens(tmp_path):
    """The floor the design promises: the quickstart's systems and pipeline (conditional tokenizer,
    next-frame tiny model; at 32² so that it fits the suite), and after 100 optimizer steps the
    model's next-frame VRMSE is within 10 % of copy-tokens (where the untrained model starts) or
    better, on each dataset."""
    from data_pipelines.config import load_config
    from data_pipelines.sharding import WindowSpec, shard_datasets
    from data_pipelines.simulators import simulate_dataset
    from physfm.eval.evaluate import score_windows, summarize
    from physfm.quickstart.pipeline import QUICKSTART_SYSTEMS
    from tokenizer.encode import encode_shards
    from tokenizer.training import TokenizerTrainConfig, train_tokenizer

    dirs = [
        simulate_dataset(system, tmp_path / "data" / system, resolution=32, seed=0, **sizes)
        for system, sizes in QUICKSTART_SYSTEMS.items()
    ]
    shards, tokens, run = tmp_path / "shards", tmp_path / "tokens", tmp_path / "ar"
    shard_datasets(dirs, shards, WindowSpec(4, 1, 1), workers=1, overwrite=True)
    overrides = [
        f"data.shards={shards}",
        f"out={tmp_path / 'tok'}",
        "trainer.max_steps=300",
        "trainer.max_time_s=0",
    ]
    overrides += ["trainer.wandb=false", "data.val_batches=0", "trainer.verbose=false"]
    tok = train_tokenizer(
        load_config(TokenizerTrainConfig, "configs/tokenizer/tiny_conditional.yaml", overrides)
    )
    encode_shards(tok, shards, tokens, splits=["train"])
    pretrain = [
        "pretrain",
        "--config",
        "configs/pretrain/tiny.yaml",
        f"data.tokens=[{tokens}]",
        f"tokenizer={tok}",
    ]
    pretrain += [
        f"out={run}",
        "model.grid_shape=[8,8]",
        "trainer.max_steps=100",
        "trainer.checkpoint_every=100",
    ]
    pretrain += [
        "trainer.logger=csv",
        "trainer.progress_bar=false",
        "data.num_workers=0",
        "data.val_batches=0",
    ]
    assert physfm(pretrain) == 0
    pm = PhysicsModel.from_pretrained(run, refiner=False)
    scores, _ = score_windows(
        pm, shards, "test", 1, methods=("ar", "copy_tokens", "persistence"), max_windows=16
    )
    for name, d in summarize(scores, [1])["vrmse"].items():
        model, copy = d["mean"]["ar"]["1"], d["mean"]["copy_tokens"]["1"]
        assert model <= 1.1 * copy, (
            f"{name}: next-frame model {model:.3f} vs copy-tokens {copy:.3f} after 100 steps"
        )

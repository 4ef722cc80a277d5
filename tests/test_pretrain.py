"""Single-process pretraining: loss falls, outputs written, exact resume, non-finite-loss guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from data_pipelines.config import ConfigError
from physfm.core.checkpoint import safe_torch_load
from physfm.train.pretrain import load_pretrain_config, run_pretrain
from tests.datagen import TINY_PRETRAIN as TINY


def config(tokens: Path, out: Path, *extra: str):
    return load_pretrain_config(
        "configs/pretrain/tiny.yaml", TINY + [f"data.tokens=[{tokens}]", f"out={out}", *extra]
    )


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return safe_torch_load(ckpt)["state_dict"]


@pytest.mark.slow
def test_loss_falls_and_run_dir_is_complete(tokens, tmp_path):
    out = run_pretrain(
        config(
            tokens,
            tmp_path / "run",
            "trainer.max_steps=60",
            "trainer.checkpoint_every=20",
            "trainer.keep_last=2",
            "trainer.log_every=5",
            "optim.lr=3e-3",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["loss_history"]
    assert metrics["steps"] == 60
    first, last = [h[1] for h in history[:2]], [h[1] for h in history[-2:]]
    assert sum(last) < 0.85 * sum(first)  # the shift rule is learnable (log 32 = 3.47 at chance)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step=0000040.ckpt",
        "step=0000060.ckpt",
    ]
    assert metrics["perf_tokens_per_s"] > 0 and 0 < metrics["perf_mfu"] < 1
    assert "val_loss" in metrics and (out / "report.md").read_text().startswith("# pretrain run")
    assert (out / "config.yaml").exists()


@pytest.mark.slow
def test_resume_matches_uninterrupted_run_bit_for_bit(tokens, tmp_path):
    common = (
        "trainer.max_steps=24",
        "trainer.checkpoint_every=8",
        "trainer.keep_last=5",
        "trainer.val_every=0",
    )
    full = run_pretrain(config(tokens, tmp_path / "full", *common))
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "step=0000016.ckpt", resumed_dir / "checkpoints")
    resumed = run_pretrain(config(tokens, resumed_dir, *common))
    assert json.loads((resumed / "metrics.json").read_text())["resumed_from"].endswith(
        "step=0000016.ckpt"
    )
    a = weights(full / "checkpoints" / "step=0000024.ckpt")
    b = weights(resumed / "checkpoints" / "step=0000024.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def nan_at(step: int):
    from physfm.train.module import ARModule

    original = ARModule.loss

    def loss(self, batch):
        value = original(self, batch)
        return value * float("nan") if self.training and self.global_step == step else value

    return loss


@pytest.mark.slow
def test_nonfinite_loss_stop_writes_no_checkpoint(tokens, tmp_path, monkeypatch):
    from physfm.train.module import ARModule, NonFiniteLoss

    monkeypatch.setattr(ARModule, "loss", nan_at(7))
    with pytest.raises(NonFiniteLoss, match="non-finite loss .* at step 7"):
        run_pretrain(
            config(tokens, tmp_path / "run", "trainer.max_steps=20", "trainer.checkpoint_every=5")
        )
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step=0000005.ckpt"]
    assert all(
        torch.isfinite(t).all()
        for t in weights(tmp_path / "run" / "checkpoints" / ckpts[0]).values()
    )


@pytest.mark.slow
def test_nonfinite_loss_skip_leaves_weights_untouched(tokens, tmp_path, monkeypatch):
    from physfm.train.module import ARModule

    monkeypatch.setattr(ARModule, "loss", nan_at(6))
    out = run_pretrain(
        config(
            tokens,
            tmp_path / "run",
            "trainer.max_steps=12",
            "trainer.checkpoint_every=1",
            "trainer.keep_last=20",
            "trainer.nonfinite_loss=skip",
            "optim.weight_decay=0.1",
        )
    )
    before = weights(out / "checkpoints" / "step=0000006.ckpt")
    after = weights(out / "checkpoints" / "step=0000007.ckpt")
    for key in before:
        assert torch.equal(before[key], after[key]), key  # the poisoned batch changed nothing
    final = safe_torch_load(out / "checkpoints" / "step=0000012.ckpt")
    assert final["physfm"]["skipped_batches"] == 1
    assert not torch.equal(
        after["model.tok_embedding.weight"], final["state_dict"]["model.tok_embedding.weight"]
    )


def test_config_errors_name_the_key(tokens, tmp_path):
    with pytest.raises(ConfigError, match="trainer.max_step"):
        config(tokens, tmp_path, "trainer.max_step=3")
    with pytest.raises(ConfigError, match="model.max_frames=2"):
        run_pretrain(config(tokens, tmp_path, "model.max_frames=2"))
    with pytest.raises(ConfigError, match="strategy.zero_stage"):
        config(tokens, tmp_path, "strategy.name=ddp", "strategy.zero_stage=3")


@pytest.mark.slow
def test_export_loads_without_pickle_and_matches(tokens, tmp_path):
    from physfm.cli import main
    from physfm.inference.loading import load_ar_model

    out = run_pretrain(
        config(tokens, tmp_path / "run", "trainer.max_steps=6", "trainer.checkpoint_every=3")
    )
    assert (
        main(
            [
                "export",
                "--ckpt",
                str(out / "checkpoints" / "step=0000006.ckpt"),
                "--out",
                str(tmp_path / "exp"),
            ]
        )
        == 0
    )
    exported, info = load_ar_model(tmp_path / "exp")
    from_run, _ = load_ar_model(out)  # a run dir resolves to its newest checkpoint
    assert info["dataset_names"] == ["alpha", "beta"] and info["n_context_frames"] == 2
    for (name, a), (_, b) in zip(exported.state_dict().items(), from_run.state_dict().items()):
        assert torch.equal(a, b), name
    assert main(["export", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_throughput_counts_the_tokens_trained_on_not_the_configs_grid(tokens, tmp_path):
    """The model positions tokens by each batch's own grid, so a token set whose grid differs from
    model.grid_shape trains; its tokens/s, TFLOP/s and MFU must come from the tokens it really
    saw."""
    from data_pipelines.manifest import Manifest
    from physfm.models.ar import PhysicsTransformer
    from physfm.train.data import token_layout

    steps, batch = 6, 8
    cfg = config(
        tokens,
        tmp_path / "run",
        "model.grid_shape=[8,8]",  # the tokens are 4x4: the config's count would be 4x too many
        f"trainer.max_steps={steps}",
        "trainer.log_every=2",
        "trainer.val_every=0",
        "trainer.peak_tflops=1",
    )
    metrics = json.loads((run_pretrain(cfg) / "metrics.json").read_text())
    n_frames = token_layout(Manifest.load(tokens)).n_frames
    per_sample = n_frames * 4 * 4
    assert metrics["tokens_trained"] == steps * batch * per_sample
    # + the dataset token
    flops_per_token = PhysicsTransformer(cfg.model).flops_per_token(per_sample + 1)
    assert metrics["perf_tflops"] * 1e12 / metrics["perf_tokens_per_s"] == pytest.approx(
        flops_per_token, rel=1e-2
    )
    # a 1 TFLOP/s peak
    assert metrics["perf_mfu"] == pytest.approx(metrics["perf_tflops"], rel=1e-2)

"""The diffusion variant: flow-matching loss falls on CPU, seeded sampling is deterministic and its
cached ODE equals the plain forward, hooks work, pretrain/export/rollout/evaluate/probe/steer take
the checkpoint, 2-rank DeepSpeed ZeRO-2 training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_pipelines.config import ConfigError
from physfm.cli import main as physfm
from physfm.interp.hooks import add_to, capture
from physfm.models.diffusion import DiffusionConfig, LatentFlowTransformer
from tests.harness import run_distributed
from tests.rollout_fixtures import build_tiny_model
from tests.tiny_model import tiny_model_config

CONFIG = "configs/pretrain/diffusion_tiny.yaml"
TINY = [
    "model.grid_shape=[4,4]",
    "model.n_layer=2",
    "model.d_model=64",
    "model.n_head=4",
    "model.n_kv_head=2",
    "model.ffn_hidden=128",
    "model.max_frames=5",
    "trainer.logger=csv",
    "trainer.progress_bar=false",
    "data.num_workers=0",
    "data.batch_size=8",
    "optim.warmup_steps=5",
    "optim.lr=3e-3",
]


def tiny_model(seed: int = 0, head_std: float = 0.1) -> LatentFlowTransformer:
    torch.manual_seed(seed)
    cfg = tiny_model_config(kind="diffusion", vocab_size=1000, max_frames=5)
    model = LatentFlowTransformer(cfg, DiffusionConfig(latent_dim=3)).eval()
    # the zero-init head would make every sample noise
    torch.nn.init.normal_(model.head.weight, std=head_std)
    return model


def overrides(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"tokenizer={paths['tokenizer']}",
        f"data.shards=[{paths['shards']}]",
        f"out={out}",
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory) -> dict[str, Path]:
    """A tiny random tokenizer + field shards (no training)."""
    return build_tiny_model(tmp_path_factory.mktemp("diffusion"))


@pytest.fixture(scope="module")
def trained(tiny_paths, tmp_path_factory):
    """The tiny tokenizer + field shards, and a diffusion model trained 40 steps on their
    latents."""
    from physfm.train.pretrain import load_pretrain_config, run_pretrain

    root = tmp_path_factory.mktemp("diffusion_run")
    paths = tiny_paths
    cfg = load_pretrain_config(
        CONFIG,
        overrides(
            paths,
            root / "run",
            "trainer.max_steps=40",
            "trainer.log_every=4",
            "trainer.checkpoint_every=20",
            "data.val_batches=2",
        ),
    )
    return paths, run_pretrain(cfg)


# ----------------------------------------------------------------------------- model (fast)
def test_sampling_is_deterministic_given_a_seed():
    model, ids = tiny_model(), torch.tensor([0, 1])
    context = torch.rand(2, 4, 4, 4, 3) * 2 - 1  # [B, F_ctx, *grid, D] code units
    for sampler in ("euler", "heun"):
        runs = [
            model.sample_frames(
                context,
                2,
                ids,
                steps=3,
                sampler=sampler,
                generator=torch.Generator().manual_seed(seed),
            )
            for seed in (7, 7, 8)
        ]
        assert runs[0].shape == (2, 2, 4, 4, 3)
        assert torch.equal(runs[0], runs[1]), sampler
        assert not torch.allclose(runs[0], runs[2]), sampler


def test_cached_ode_equals_the_plain_forward():
    """The context is prefilled once into the KV cache; each ODE step must equal a full forward
    pass."""
    model, ids = tiny_model(), torch.tensor([1])
    context = torch.rand(1, 4, 4, 4, 3) * 2 - 1
    scale = model.diffusion.latent_scale
    sampled = model.sample_frames(
        context, 1, ids, steps=2, sampler="heun", generator=torch.Generator().manual_seed(3)
    )
    x = torch.randn((1, 1, 4, 4, 3), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for t0, t1 in ((0.0, 0.5), (0.5, 1.0)):
            v0 = model(context * scale, x, torch.tensor([t0]), ids)
            v1 = model(context * scale, x + (t1 - t0) * v0, torch.tensor([t1]), ids)
            x = x + (t1 - t0) * 0.5 * (v0 + v1)
    torch.testing.assert_close(sampled, x / scale, rtol=1e-5, atol=1e-5)


def test_context_never_sees_the_noisy_frame():
    model, ids = tiny_model(), torch.tensor([0])
    context, noisy = torch.randn(1, 3, 4, 4, 3), torch.randn(1, 1, 4, 4, 3)
    with torch.no_grad(), capture(model, ["blocks.1.resid"]) as acts:
        model(context, noisy, torch.tensor([0.3]), ids)
        model(context, noisy * 5, torch.tensor([0.9]), ids)
    a, b = acts["blocks.1.resid"]
    n_ctx_tokens = 1 + 3 * 16
    # frame-causal: context unchanged
    torch.testing.assert_close(a[:, :n_ctx_tokens], b[:, :n_ctx_tokens])
    assert not torch.allclose(a[:, n_ctx_tokens:], b[:, n_ctx_tokens:])


def test_hook_points_steer_sampling():
    model, ids = tiny_model(), torch.tensor([0])
    context = torch.rand(1, 4, 4, 4, 3)
    gen = lambda: torch.Generator().manual_seed(0)
    base = model.sample_frames(context, 1, ids, steps=2, generator=gen())
    with capture(model, ["embedding", "blocks.0.resid"]) as acts:
        model.sample_frames(context, 1, ids, steps=2, generator=gen())
    # prefill, then one per step
    assert [a.shape[1] for a in acts["blocks.0.resid"]] == [1 + 4 * 16, 16, 16]
    assert [a.shape[1] for a in acts["embedding"]] == [4 * 16, 16, 16]
    direction = torch.randn(32)
    # noisy frame only
    with add_to(model, "blocks.1.resid", lambda h, pos: (pos[:, :1] >= 4).to(h) * 5 * direction):
        steered = model.sample_frames(context, 1, ids, steps=2, generator=gen())
    assert not torch.allclose(base, steered)


def test_token_windows_read_as_their_fsq_codes():
    """Probing/steering feed token ids: the model maps them to the tokenizer's codes by itself."""
    from tokenizer.fsq import FSQ

    model, ids = tiny_model(), torch.tensor([0])
    model.diffusion.fsq_levels = [8, 5, 3]
    window = torch.randint(0, 8 * 5 * 3, (1, 5, 4, 4))
    torch.testing.assert_close(
        model.codes_from_ids(window), FSQ([8, 5, 3]).indices_to_codes(window)
    )
    with capture(model, ["blocks.0.resid"]) as acts:
        v = model.forward_window(window, ids)
    assert v.shape == (1, 1, 4, 4, 3) and acts["blocks.0.resid"][0].shape == (1, 1 + 5 * 16, 32)


@pytest.mark.slow
def test_training_loss_falls_on_cpu():
    """Plain optimisation of the flow-matching loss (no Lightning): the next frame is a fixed
    pattern per dataset, learnable only through the dataset token and the noisy frame's own
    tokens."""
    model = tiny_model(head_std=0.0).train()
    gen = torch.Generator().manual_seed(0)
    context = torch.rand(8, 4, 4, 4, 3, generator=gen) * 2 - 1
    patterns = torch.rand(2, 1, 4, 4, 3, generator=gen) * 2 - 1
    ids = torch.arange(8) % 2
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        loss = model.loss(
            context, patterns[ids], ids, generator=torch.Generator().manual_seed(step)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.85 * sum(losses[:10]), losses[::5]


# ----------------------------------------------------------------------------- conditional tokenizer
def test_conditional_tokenizer_trains_rolls_out_and_decodes_as_its_codec(tmp_path, monkeypatch):
    """On a conditional tokenizer (key frame + frames coded given the previous one): a few training
    steps, a finite rollout of the right shape, and the rollout decodes latents as the codec does:
    fed the true future's latents it returns the tokenizer's closed-loop decode of the true future's
    tokens from the last true context frame (its first frame the tokenizer's own reconstruction)."""
    from physfm.eval.windows import evaluation_windows
    from physfm.inference import PhysicsModel
    from physfm.train.pretrain import load_pretrain_config, run_pretrain

    paths = build_tiny_model(tmp_path / "fixture", conditional=True)
    extra = ("trainer.max_steps=3", "trainer.checkpoint_every=3", "data.val_batches=0")
    run = run_pretrain(load_pretrain_config(CONFIG, overrides(paths, tmp_path / "run", *extra)))
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3
    pm = PhysicsModel.from_pretrained(run, sampling_steps=2, snap_to_codes=True)
    assert pm.conditional
    batch = next(iter(evaluation_windows(paths["shards"], "test", 3, batch_size=2)))
    ctx, truth = batch.context, batch.truth
    frames, ids = pm.rollout(ctx, 3, "waves", seed=1, return_tokens=True)
    assert frames.shape == truth.shape and ids.shape == (2, 3, 4, 4)
    assert torch.isfinite(frames).all()
    # steering's generation runs a conditional model's rollout in field space (no refiner here)
    from physfm.interp.steer_rollout import _generate

    new, last_window, fields = _generate(pm, pm.encode(ctx, "waves"), 4, 5, 2, "waves")
    assert new.shape == (2, 2, 4, 4) and last_window.shape == (2, 5, 4, 4)
    assert fields.shape == (2, 2, *truth.shape[2:])

    window = torch.cat([ctx, truth], 1)
    future = pm.encode_latents(window, "waves")[:, ctx.shape[1] :]
    codec = pm.decode(pm.encode(window, "waves")[:, ctx.shape[1] :], "waves", prev=ctx[:, -1])
    torch.testing.assert_close(pm.decode_latents(future, "waves", prev=ctx[:, -1]), codec)
    ceiling = pm.tokenizer_ceiling(ctx, truth, "waves")
    torch.testing.assert_close(codec[:, 0], ceiling[:, 0])

    served = []  # the rollout's sampler replaced by the true future's latents, in order

    def true_latents(context, n_frames, dataset, generator=None):
        start = sum(served)
        served.append(n_frames)
        return future[:, start : start + n_frames]

    monkeypatch.setattr(pm, "generate_latents", true_latents)
    torch.testing.assert_close(pm.rollout(ctx, 3, "waves"), codec)
    assert served == [1, 1, 1]  # 4 + 1 frame windows: re-keyed at every frame


# ----------------------------------------------------------------------------- platform (slow:
# trains)
@pytest.mark.slow
def test_pretrain_loss_falls_and_run_is_complete(trained):
    _, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    history = [loss for _, loss in metrics["loss_history"]]
    assert metrics["steps"] == 40 and "val_loss" in metrics
    assert sum(history[-3:]) < 0.8 * sum(history[:3]), history
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "diffusion" and info["model"]["kind"] == "diffusion"
    assert info["diffusion"]["latent_dim"] == 2  # the fixture tokenizer's two FSQ levels
    assert (info["n_context_frames"], info["n_frames"]) == (4, 5)
    # steps x batch x latent frames x the 4x4 latent grid
    assert metrics["tokens_trained"] == 40 * 8 * 5 * 4 * 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step=0000020.ckpt",
        "step=0000040.ckpt",
    ]
    state = torch.load(run / "checkpoints" / "step=0000040.ckpt", weights_only=True)["state_dict"]
    # the frozen tokenizer is not checkpointed
    assert not any(k.startswith("tokenizer") for k in state)


@pytest.mark.slow
def test_rollout_seeded_and_export_round_trip(trained, tmp_path):
    from physfm.eval.windows import evaluation_windows
    from physfm.inference import PhysicsModel

    paths, run = trained
    pm = PhysicsModel.from_pretrained(run, sampling_steps=3)
    assert type(pm).__name__ == "DiffusionPhysicsModel" and pm.describe()["sampling_steps"] == 3
    batch = next(iter(evaluation_windows(paths["shards"], "test", 3, batch_size=4)))
    a, ids = pm.rollout(batch.context, 3, "waves", seed=5, return_tokens=True)
    assert a.shape == batch.truth.shape and ids.shape == (4, 3, 4, 4) and torch.isfinite(a).all()
    assert torch.equal(a, pm.rollout(batch.context, 3, "waves", seed=5))
    assert not torch.equal(a, pm.rollout(batch.context, 3, "waves", seed=6))
    assert physfm(["export", "--ckpt", str(run), "--out", str(tmp_path / "exp")]) == 0
    exported = PhysicsModel.from_pretrained(tmp_path / "exp", sampling_steps=3)
    torch.testing.assert_close(exported.rollout(batch.context, 3, "waves", seed=5), a)
    # an AR option: not in a diffusion model's rollout
    with pytest.raises(TypeError, match="temperature"):
        pm.rollout(batch.context, 3, "waves", temperature=1.0)
    with pytest.raises(
        ValueError, match=r"temperature \(--temperature\) apply to AR models; this is a diffusion"
    ):
        pm.rollout_options(temperature=1.0, top_k=None)  # what evaluate asks before rolling out
    assert pm.rollout_options(temperature=0.0, top_k=None) == {}
    with pytest.raises(ValueError, match="refiner"):
        PhysicsModel.from_pretrained(run, refiner="some/dir")


@pytest.mark.slow
def test_evaluate_and_rollout_cli_accept_the_checkpoint(trained, tmp_path, capsys):
    paths, run = trained
    common = [
        "--ckpt",
        str(run),
        "--data",
        str(paths["shards"]),
        "--max-windows",
        "3",
        "--sampling-steps",
        "2",
    ]
    assert physfm(["evaluate", *common, "--horizons", "1,3", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["methods"] == ["diffusion", "persistence", "copy_tokens", "tokenizer_ceiling"]
    assert metrics["model"]["kind"] == "diffusion" and metrics["model"]["sampling_steps"] == 2
    assert set(metrics["overall"]["diffusion"]) == {"1", "3"}
    assert "2 euler sampling step(s)" in (tmp_path / "ev" / "report.md").read_text()
    assert (tmp_path / "ev" / "rollout_waves.png").is_file()
    assert (
        physfm(
            [
                "rollout",
                *common,
                "--sampler",
                "heun",
                "--horizon",
                "2",
                "--out",
                str(tmp_path / "ro"),
            ]
        )
        == 0
    )
    from safetensors.torch import load_file

    pred = load_file(str(tmp_path / "ro" / "predictions" / "waves.safetensors"))
    assert pred["prediction"].shape == pred["truth"].shape and pred["prediction"].shape[1] == 2
    # An AR model refuses the diffusion-only flag, as a one-line user error.
    capsys.readouterr()
    assert (
        physfm(
            [
                "evaluate",
                "--ckpt",
                str(paths["export"]),
                "--data",
                str(paths["shards"]),
                "--sampling-steps",
                "2",
                "--out",
                str(tmp_path / "ar"),
            ]
        )
        == 2
    )
    assert "apply to diffusion models" in capsys.readouterr().err


@pytest.mark.slow
def test_probe_and_steer_accept_the_checkpoint(trained, tmp_path, capsys):
    """Token windows reach the diffusion model as their codes (forward_window), steering hooks its
    sampling."""
    from physfm.interp.steer import load_direction

    paths, run = trained
    direction = tmp_path / "speed.safetensors"
    assert (
        physfm(
            [
                "steer",
                "direction",
                "--ckpt",
                str(run),
                "--data",
                str(paths["shards"]),
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
            ]
        )
        == 0
    ), capsys.readouterr().err
    d = load_direction(direction)
    assert d.vectors["blocks.1.resid"].shape == (4, 4, 64)
    assert d.meta["counts"]["feature"] > 0 and d.meta["counts"]["control"] > 0
    out = tmp_path / "steer"
    assert (
        physfm(
            [
                "steer",
                "rollout",
                "--ckpt",
                str(run),
                "--data",
                str(paths["shards"]),
                "--direction",
                str(direction),
                "--alpha=-1,0,1",
                "--out",
                str(out),
                "--horizon",
                "2",
                "--max-windows",
                "3",
                "--spatial-mode",
                "mean",
            ]
        )
        == 0
    ), capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    # seeded sampling: α = 0 is the unsteered run
    assert m["alpha0_identical"] is True and m["n_windows"] == 3
    assert len(m["curves"]["probe speed"]["mean"]) == 3 and (out / "dose_response.png").is_file()
    steered = m["curves"]["probe speed"]["mean"]
    assert steered[0] != steered[2]  # the steering reached the samples


@pytest.mark.slow
def test_config_errors_name_the_key(tiny_paths, tmp_path):
    from physfm.train.pretrain import load_pretrain_config, run_pretrain

    paths = tiny_paths
    with pytest.raises(ConfigError, match="data.shards"):
        load_pretrain_config(
            CONFIG, [*TINY, "data.shards=[]", "data.tokens=[x]", f"tokenizer={paths['tokenizer']}"]
        )
    with pytest.raises(ConfigError, match="diffusion.latent_dim=3"):
        run_pretrain(
            load_pretrain_config(CONFIG, overrides(paths, tmp_path / "r", "diffusion.latent_dim=3"))
        )
    with pytest.raises(ConfigError, match="diffusion.sampling_steps"):
        load_pretrain_config(CONFIG, overrides(paths, tmp_path / "r", "diffusion.sampling_steps=0"))


# ----------------------------------------------------------------------------- 2 ranks, DeepSpeed
# ZeRO-2
@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_deepspeed_zero2_trains(trained, tmp_path):
    from physfm.eval.windows import evaluation_windows
    from physfm.inference import PhysicsModel

    paths, _ = trained
    out = tmp_path / "ds"
    args = [
        "-m",
        "physfm.cli",
        "pretrain",
        "--config",
        CONFIG,
        *overrides(
            paths,
            out,
            "trainer.max_steps=12",
            "trainer.checkpoint_every=12",
            "trainer.log_every=3",
            "data.val_batches=0",
            "strategy.name=deepspeed",
            "strategy.zero_stage=2",
            "strategy.accelerator=cpu",
        ),
    ]
    result = run_distributed(args, nproc=2, timeout=240)
    assert result.ok, result.describe()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 12 and len(metrics["loss_history"]) >= 3
    ckpt = out / "checkpoints" / "step=0000012.ckpt"
    # one ZeRO shard per rank
    assert ckpt.is_dir() and len(list(ckpt.rglob("*optim_states.pt"))) == 2
    pm = PhysicsModel.from_pretrained(out, sampling_steps=1)  # consolidates the shards
    batch = next(iter(evaluation_windows(paths["shards"], "test", 1, batch_size=2)))
    assert torch.isfinite(pm.rollout(batch.context, 1, "waves")).all()

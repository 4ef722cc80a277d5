"""Refinement U-Net: identity at init (1D/2D/3D), training lowers the loss, --refine changes the
rollout."""

import json

import pytest
import torch

from data_pipelines.errors import DataError
from physfm.cli import main as physfm
from physfm.eval.windows import evaluation_windows
from physfm.inference import PhysicsModel
from physfm.models.refiner import Refiner, RefinerConfig, load_refiner, save_refiner
from physfm.train.refine import load_refine_config, run_refine
from tests.rollout_fixtures import build_tiny_model


@pytest.mark.parametrize("n_dims,shape", [(1, (32,)), (2, (16, 8)), (3, (8, 8, 4))])
def test_untrained_refiner_is_the_identity_in_1d_2d_3d(n_dims, shape):
    refiner = Refiner(RefinerConfig(width=8, levels=2, context_frames=2), n_dims, {"d": ["a", "b"]})
    # short history is padded
    pred, context = torch.randn(3, 2, *shape), torch.randn(3, 1, 2, *shape)
    assert torch.equal(refiner(pred, context, "d"), pred)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels"):
        refiner(torch.randn(1, 2, *(6,) * n_dims), torch.randn(1, 2, 2, *(6,) * n_dims), "d")
    with pytest.raises(KeyError, match="unknown to this refiner"):
        refiner(pred, context, "other")


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    paths = build_tiny_model(tmp_path_factory.mktemp("refine"), datasets=("ripples", "waves"))
    cfg = load_refine_config(
        None,
        [
            f"ckpt={paths['export']}",
            f"data.shards={paths['shards']}",
            "train.steps=80",
            "train.log_every=20",
            "data.n_windows=16",
            "model.width=8",
            # the one-step gate alone: these tests need a refiner that is on by default
            "data.gate_horizon=0",
        ],
    )
    out = run_refine(cfg, log=None)
    return paths, out


@pytest.mark.slow
def test_refine_trains_and_writes_its_files(refined):
    paths, out = refined
    assert out == paths["export"] / "refiner"  # next to the model, where from_pretrained looks
    for name in ("refiner.safetensors", "refiner.json", "metrics.json", "report.md"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [loss for _, loss in metrics["loss_history"]]
    assert losses[-1] < 0.6 * losses[0]
    # The untrained AR's decoded frames carry no information; the refiner learns to forecast from
    # the context.
    for name, v in metrics["vrmse_next_step"]["valid"].items():
        assert v["refined"] < 0.8 * v["input"], name
    assert "| valid | waves |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_refine_flag_changes_the_rollout_and_evaluate_reports_both(refined, tmp_path):
    from physfm.eval.evaluate import evaluate

    paths, out = refined
    pm = PhysicsModel.from_pretrained(paths["export"])  # finds EXPORT/refiner by itself
    assert pm.refiner is not None and pm.describe()["refiner"] == str(out)
    ctx = next(evaluation_windows(paths["shards"], "test", 2, datasets=["waves"])).context
    plain, refined_out = (
        pm.rollout(ctx, 2, "waves", refine=False),
        pm.rollout(ctx, 2, "waves", refine=True),
    )
    assert refined_out.shape == plain.shape and not torch.allclose(refined_out, plain)
    # a model with a refiner refines by default
    assert torch.equal(pm.rollout(ctx, 2, "waves"), refined_out)
    assert PhysicsModel.from_pretrained(paths["export"], refiner=False).refiner is None
    metrics = evaluate(paths["export"], paths["shards"], [1, 2], tmp_path / "ev", model=pm)
    assert metrics["methods"][:2] == ["ar", "ar_refined"]
    assert metrics["overall"]["ar_refined"]["1"] < metrics["overall"]["ar"]["1"]
    no_ref = evaluate(
        paths["export"], paths["shards"], [1], tmp_path / "ev2", model=pm, refine=False
    )
    assert "ar_refined" not in no_ref["methods"]


@pytest.mark.slow
def test_refiner_files_are_verified(refined, tmp_path):
    paths, out = refined
    refiner, meta = load_refiner(out)
    assert meta["datasets"] == {
        "ripples": ["u", "vel_x", "vel_y"],
        "waves": ["u", "vel_x", "vel_y"],
    }
    copy = save_refiner(refiner, tmp_path / "copy", {"tokenizer_fingerprint": "someone-else"})
    with pytest.raises(DataError, match="another tokenizer"):
        PhysicsModel.from_pretrained(paths["export"], refiner=copy)
    (copy / "refiner.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="does not match refiner.json"):
        load_refiner(copy)
    with pytest.raises(DataError, match="not a refiner directory"):
        load_refiner(tmp_path)


@pytest.mark.slow
def test_refine_cli_rejects_unknown_keys(refined, capsys):
    paths, _ = refined
    code = physfm(
        ["refine", "--ckpt", str(paths["export"]), "--data", str(paths["shards"]), "train.stepz=3"]
    )
    assert code == 2 and "train.stepz" in capsys.readouterr().err


@pytest.mark.slow
def test_rollout_pairs_pair_each_step_with_the_models_own_history(refined):
    """PhysiX's recipe: step k of the AR model's rollout is paired with the frames before it, the
    true context followed by the model's own raw predictions, and with the true frame k."""
    from physfm.train.refine import collect_pairs

    paths, _ = refined
    pm = PhysicsModel.from_pretrained(paths["export"], refiner=False)
    steps = 3
    one = collect_pairs(pm, paths["shards"], "train", 4, rollout_steps=1)
    many = collect_pairs(pm, paths["shards"], "train", 4, rollout_steps=steps)
    for name, p in many.items():
        assert len(p) == steps * len(one[name])
    name = sorted(many)[0]
    p, n = many[name], len(one[name])
    batch = next(
        b
        for b in evaluation_windows(paths["shards"], "train", steps, max_windows=4)
        if b.dataset == name
    )
    raw = pm.tokenizer.normalize(pm.rollout(batch.context, steps, name), name)
    truth = pm.tokenizer.normalize(batch.truth, name)
    # pairs are stored step by step: step k of window w sits at k * n + w
    w = 0
    for k in range(steps):
        torch.testing.assert_close(p.pred[k * n + w], raw[w, k])
        torch.testing.assert_close(p.truth[k * n + w], truth[w, k])
        # the step the refiner is told (1 = the first predicted frame)
        assert int(p.step[k * n + w]) == k + 1
    # step 1 sees the model's step-0 prediction
    torch.testing.assert_close(p.context[1 * n + w][-1], raw[w, 0])
    torch.testing.assert_close(
        p.context[0 * n + w][-1], pm.tokenizer.normalize(batch.context[w, -1], name)
    )


def test_refiner_reads_the_rollout_step_and_older_refiners_still_load(tmp_path):
    """``step_input``: 1 / step is an input channel (a trained refiner corrects step 1 and step 4
    differently); a refiner saved before the option (no ``step_input`` in refiner.json) loads
    without the channel."""
    refiner = Refiner(RefinerConfig(width=8, levels=1, context_frames=1), 2, {"d": ["a"]})
    torch.nn.init.normal_(
        next(iter(refiner.heads.values())).weight, std=0.1
    )  # as if trained: the residual is no longer zero
    pred, context = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 1, 8, 8)
    first, fourth = (
        refiner(pred, context, "d", 1),
        refiner(pred, context, "d", torch.tensor([4, 4])),
    )
    assert not torch.allclose(first, fourth)
    with pytest.raises(ValueError, match="count from 1"):
        refiner(pred, context, "d", 0)
    old = Refiner(
        RefinerConfig(width=8, levels=1, context_frames=1, step_input=False), 2, {"d": ["a"]}
    )
    save_refiner(old, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "refiner.json").read_text())
    del meta["model"]["step_input"]
    (tmp_path / "old" / "refiner.json").write_text(json.dumps(meta))
    loaded, _ = load_refiner(tmp_path / "old")
    assert loaded.cfg.step_input is False
    # identity at init, step ignored
    torch.testing.assert_close(loaded(pred, context, "d", 3), pred)

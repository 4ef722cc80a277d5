"""The fine-tuning recipe: per-part learning rates, frozen trunk warm-up, early stopping on the
validation split with the best checkpoint kept, and keep-better against the zero-shot model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_pipelines.config import ConfigError, to_dict
from physfm.core.checkpoint import safe_torch_load
from physfm.inference.loading import load_model_state
from physfm.models.ar import PhysicsTransformer
from physfm.models.lora import add_lora
from physfm.train.config import OptimConfig
from physfm.train.finetune import load_finetune_config, run_finetune
from physfm.train.module import ARModule
from physfm.train.param_groups import ParamPlan
from tests.datagen import make_toy_dataset
from tests.rollout_fixtures import build_tiny_model, tiny_model_config

FAST = [
    "data.batch_size=4",
    "data.val_batches=1",
    "finetune.tokenizer_steps=3",
    "finetune.eval_max_windows=2",
    "finetune.eval_horizons=[1]",
]


def _module(plan_scale: float, frozen: int, lora: bool = False) -> ARModule:
    module = ARModule(
        tiny_model_config(max_frames=5, n_datasets=4),
        to_dict(OptimConfig(lr=1e-3, warmup_steps=2, min_lr_ratio=0.1)),
        dataset_names=["a", "b"],
        n_context_frames=4,
        max_steps=10,
    )
    pretrained = list(module.model.state_dict())
    if lora:
        add_lora(module.model, rank=2, alpha=4.0)
    module.param_plan = ParamPlan.for_model(module.model, pretrained, plan_scale, frozen)
    return module


def test_param_groups_get_their_learning_rates_and_schedules():
    module = _module(plan_scale=0.1, frozen=3)
    conf = module.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"new", "trunk_decay", "trunk_no_decay"}
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert [names[id(p)] for p in groups["new"]["params"]] == ["dataset_embedding.weight"]
    assert groups["new"]["weight_decay"] == 0.0 and groups["trunk_decay"]["weight_decay"] == 0.1
    # step 0: warm-up 1/2 of the peak for the new part; the trunk is frozen (lr 0) for 3 steps
    assert groups["new"]["lr"] == pytest.approx(1e-3 / 2)
    assert groups["trunk_decay"]["lr"] == 0.0
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    # step 3: the new part is past its warm-up, the trunk starts its own at 0.1 x the peak
    assert groups["new"]["lr"] < 1e-3 and groups["new"]["lr"] > 1e-4
    assert groups["trunk_decay"]["lr"] == pytest.approx(1e-4 / 2)
    assert groups["trunk_no_decay"]["lr"] == pytest.approx(1e-4 / 2)


def test_lora_adapters_are_new_parts():
    module = _module(plan_scale=0.5, frozen=0, lora=True)
    groups = {g["name"]: g for g in module.configure_optimizers()["optimizer"].param_groups}
    names = {id(p): n for n, p in module.model.named_parameters()}
    new = {names[id(p)] for p in groups["new"]["params"]}
    assert "dataset_embedding.weight" in new and all(
        n.endswith(("lora_a", "lora_b")) for n in new - {"dataset_embedding.weight"}
    )
    assert "trunk_decay" not in groups  # LoRA leaves no pretrained weight trainable


def test_no_plan_is_pretrainings_two_groups():
    module = ARModule(
        tiny_model_config(max_frames=5, n_datasets=4),
        to_dict(OptimConfig()),
        dataset_names=["a"],
        n_context_frames=4,
        max_steps=10,
    )
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert sum(len(g["params"]) for g in groups) == len(list(module.parameters()))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("finetune.trunk_lr_scale=-1", "finetune.trunk_lr_scale"),
        ("finetune.frozen_warmup_steps=-1", "finetune.frozen_warmup_steps"),
        ("finetune.frozen_warmup_steps=100", "finetune.frozen_warmup_steps"),
        ("finetune.patience=-2", "finetune.patience"),
    ],
)
def test_recipe_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_finetune_config("configs/finetune/recipe.yaml", ["trainer.max_steps=100", override])


def test_early_stopping_needs_validation():
    with pytest.raises(ConfigError, match=r"finetune\.patience.*data\.val_batches"):
        load_finetune_config(
            "configs/finetune/recipe.yaml", ["finetune.patience=2", "data.val_batches=0"]
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recipe")
    pretrained = build_tiny_model(root / "pre")["export"]
    return pretrained, make_toy_dataset(root / "toy", "toy", n_steps=10)


def _config(setup, out: Path, *extra: str):
    pretrained, data = setup
    return load_finetune_config(
        "configs/finetune/recipe.yaml",
        [*FAST, f"finetune.init={pretrained}", f"finetune.data={data}", f"out={out}", *extra],
    )


@pytest.mark.slow
def test_frozen_warmup_freezes_the_trunk_then_releases_it(setup, tmp_path):
    out = run_finetune(
        _config(
            setup,
            tmp_path / "run",
            "trainer.max_steps=4",
            "trainer.checkpoint_every=1",
            "trainer.keep_last=5",
            "trainer.val_every=100",
            "finetune.frozen_warmup_steps=3",
            "finetune.patience=0",
        )
    )
    before, _ = load_model_state(out / "model_before")

    def weights(step: int) -> dict[str, torch.Tensor]:
        state = safe_torch_load(out / "checkpoints" / f"step={step:07d}.ckpt")["state_dict"]
        return {k.removeprefix("model."): v for k, v in state.items()}

    frozen, released = weights(3), weights(4)
    trunk = [k for k in before if not k.startswith("dataset_embedding")]
    assert all(torch.equal(frozen[k], before[k]) for k in trunk)
    new_row = 1  # "waves" is id 0, the new "toy" id 1
    table = "dataset_embedding.weight"
    assert not torch.equal(frozen[table][new_row], before[table][new_row])
    assert torch.equal(frozen[table][0], before[table][0])  # no gradient, no decay: unchanged
    assert any(not torch.equal(released[k], before[k]) for k in trunk)


@pytest.mark.slow
def test_early_stop_keeps_best_and_keep_better_falls_back_to_zeroshot(setup, tmp_path, monkeypatch):
    # A learning rate of 3 wrecks the model: validation loss rises and early stopping ends the run.
    # On this toy both models roll out near VRMSE 1 (the zero-shot one is untrained on it too), so
    # which wins the h=1 comparison is a coin toss; the selection's scores are shifted to make the
    # wrecked weights lose (the rule itself: test_keep_better_keeps_the_fine_tune_only_when_lower).
    import physfm.train.finetune_select as select

    real = select.evaluate_models

    def fine_tune_scores_worse(models, *args, **kwargs):
        result = real(models, *args, **kwargs)
        if set(models) == {"finetuned", "zeroshot"}:
            for h in result["overall"]["finetuned"]:
                result["overall"]["finetuned"][h] = result["overall"]["zeroshot"][h] + 1.0
        return result

    monkeypatch.setattr(select, "evaluate_models", fine_tune_scores_worse)
    out = run_finetune(
        _config(
            setup,
            tmp_path / "run",
            "optim.lr=3.0",
            "optim.warmup_steps=1",
            "trainer.max_steps=12",
            "trainer.val_every=1",
            "trainer.checkpoint_every=12",
            "finetune.frozen_warmup_steps=0",
            "finetune.trunk_lr_scale=1.0",
            "finetune.patience=2",
            "trainer.log_every=1",  # a training loss at every step for the learning summary
        )
    )
    m = json.loads((out / "metrics.json").read_text())
    history = m["train"]["val_loss_history"]
    best_at = min(history, key=lambda sv: sv[1])[0]
    assert m["stopped_early"] and m["steps"] < 12 and m["steps"] == history[-1][0] + 1
    # patience 2: exactly two validations after the best one
    assert [s for s, _ in history].index(best_at) == len(history) - 3
    assert m["best_step"] == best_at + 1  # a checkpoint is named by the steps done
    assert m["kept"] == "zeroshot" and m["selection"]["split"] == "valid"
    sel = m["selection"]
    assert sel["finetuned_vrmse_1"] >= sel["zeroshot_vrmse_1"]
    kept, _ = load_model_state(out / "model")
    zeroshot, _ = load_model_state(out / "model_before")
    assert kept.keys() == zeroshot.keys() and all(torch.equal(kept[k], zeroshot[k]) for k in kept)
    assert "finetuned_discarded" in m["overall"]
    assert "Kept: **zeroshot**" in (out / "report.md").read_text()
    # the learning curves are drawn and their best validation is the selected checkpoint's
    assert (out / "loss_vs_step.png").stat().st_size > 0
    assert m["learning"]["finetuned"]["best_step"] == best_at
    assert "Fine-tuned learning curve" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("finetuned", "zeroshot", "kept"),
    [(0.2, 0.3, "finetuned"), (0.3, 0.2, "zeroshot"), (0.25, 0.25, "zeroshot")],
)
def test_keep_better_keeps_the_fine_tune_only_when_lower(
    monkeypatch, tmp_path, finetuned, zeroshot, kept
):
    import physfm.train.finetune_select as select
    from data_pipelines.manifest import Manifest

    class Splits:
        splits = {"valid": type("Split", (), {"n_samples": 4})()}

    scores = {"finetuned": finetuned, "zeroshot": zeroshot, "persistence": 0.5}
    monkeypatch.setattr(Manifest, "load", lambda path: Splits())
    monkeypatch.setattr(
        select,
        "evaluate_models",
        lambda models, *a, **k: {
            "overall": {m: {"1": v} for m, v in scores.items()},
            "n_windows": {"toy": 4},
        },
    )
    sel = select.compare_on_validation(tmp_path / "a", tmp_path / "b", tmp_path, ["toy"], 4)
    assert sel["kept"] == kept and sel["split"] == "valid"
    assert (sel["finetuned_vrmse_1"], sel["zeroshot_vrmse_1"]) == (finetuned, zeroshot)


def test_plan_for_pretrained_model_marks_only_embedding_new():
    model = PhysicsTransformer(tiny_model_config(max_frames=5, n_datasets=4))
    plan = ParamPlan.for_model(model, model.state_dict().keys(), 0.3, 2)
    assert plan.new_names == {"dataset_embedding.weight"}


def test_quickstart_table_shows_the_discarded_fine_tune():
    from physfm.quickstart.finetune import comparison_table

    scores = {
        "finetuned": 0.06,
        "finetuned_discarded": 0.07,
        "pretrained": 0.06,
        "persistence": 0.05,
    }
    m = {
        "horizons": [1],
        "kept": "zeroshot",
        "overall": {k: {"1": v} for k, v in scores.items()},
        "vrmse": {"burgers1d": {k: {"1": v} for k, v in scores.items()}},
    }
    rows = comparison_table(m).splitlines()[2:]
    assert rows == [
        "| burgers1d | fine-tuned (kept: zero-shot) | 0.0600 |",
        "| burgers1d | fine-tuned, trained weights (discarded) | 0.0700 |",
        "| burgers1d | zero-shot | 0.0600 |",
        "| burgers1d | persistence | 0.0500 |",
    ]


def test_learning_summary_flags_a_run_that_fits_its_training_data_past_its_best_validation():
    from physfm.train.finetune_eval import _learning_lines, learning_summary

    train = [(9, 3.0), (19, 1.9), (29, 1.2)]
    overfit = learning_summary(train, [(4, 1.05), (9, 1.03), (19, 1.09), (29, 1.30)])
    assert overfit == {
        "best_step": 9,
        "best_valid": 1.03,
        "last_step": 29,
        "last_valid": 1.3,
        "train_at_best": 3.0,
        "train_last": 1.2,
        "overfit": True,
    }
    # still improving at its last validation: no verdict against a longer budget
    improving = learning_summary(train, [(9, 1.2), (19, 1.1), (29, 1.0)])
    assert improving["best_step"] == 29 and not improving["overfit"]
    # validation flat within the margin while training falls: not called overfitting
    flat = learning_summary(train, [(9, 1.00), (19, 1.02), (29, 1.05)])
    assert not flat["overfit"]
    assert (
        learning_summary(train, [(9, 1.0)]) is None
        and learning_summary([], [(1, 1), (2, 1)]) is None
    )
    lines = _learning_lines(
        {"learning": {"finetuned": overfit, "scratch": improving}, "figures": ["loss_vs_step.png"]}
    )
    text = "\n".join(lines)
    assert "Fine-tuned learning curve: validation loss lowest at step 9 (1.030)" in text
    assert "3.000 → 1.200" in text and "a longer budget will not help" in text
    assert "Scratch learning curve: validation loss lowest at step 29 (1.000)" in text
    assert "![loss vs step](loss_vs_step.png)" in text


def test_loss_vs_step_draws_each_runs_curves(tmp_path):
    from physfm.eval.plots import loss_vs_step

    runs = {
        "finetuned": {"train": [(9, 3.0), (19, 1.9)], "valid": [(4, 1.05), (9, 1.03)]},
        "scratch": {"train": [(9, 4.0)], "valid": []},
    }
    path = loss_vs_step(runs, tmp_path / "loss.png", title="t")
    assert path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

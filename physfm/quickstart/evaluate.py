"""The quickstart's refine and evaluate stages (after pretrain): a small refiner, then the model,
the refined model and the baselines on capped test windows, with the report's plots.

Sizes are set by time, not by the data: the stages cap windows per dataset and the horizon to stay
within about a minute each; `physfm evaluate` on the run gives the full picture. The refiner trains
on the AR model's own rollouts (PhysiX's recipe), and what a user gets by default
(``default_method``: the refined rollout) is what the report compares with persistence.
"""

from __future__ import annotations

import json
from typing import Any

from physfm.eval.evaluate import evaluate
from physfm.inference.sampling import ARSampling, Sampling
from physfm.train.refine import load_refine_config, run_refine

REFINE_OVERRIDES = [
    "train.steps=100",
    "train.log_every=25",
    "data.n_windows=8",
    "data.val_windows=4",
    "data.batch_size=8",
    "model.width=16",
    # the default-on gate's held-out rollout: 4 windows x 8 frames per dataset
    "data.gate_windows=4",
]
EVAL_HORIZONS = [1, 2]
EVAL_MAX_WINDOWS = 4  # per dataset


def _needs(ctx, *keys: str) -> None:
    missing = [k for k in keys if k not in ctx.state]
    if missing:
        raise RuntimeError(
            f"quickstart: this stage needs {', '.join(missing)} from earlier stages "
            "(shard, pretrain); run the whole quickstart or those stages first"
        )


def stage_refine(ctx) -> dict[str, Any]:
    """Fit the refinement U-Net to the pretrained AR model (``ctx.state["ar_run"]``)."""
    _needs(ctx, "ar_run", "shards")
    cfg = load_refine_config(
        None,
        [
            f"ckpt={ctx.state['ar_run']}",
            f"data.shards={ctx.state['shards']}",
            f"out={ctx.out / 'refiner'}",
            f"seed={ctx.seed}",
            *REFINE_OVERRIDES,
        ],
    )
    out = run_refine(cfg, log=None)
    ctx.state["refiner"] = str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    split = "valid" if "valid" in metrics["vrmse_next_step"] else "train"
    scores = metrics["vrmse_next_step"][split]
    mean = {
        k: sum(v[k] for v in scores.values()) / len(scores)
        for k in ("input", "refined", "persistence")
    }
    return {
        "steps": cfg.train.steps,
        "loss_first": round(metrics["loss_history"][0][1], 4),
        "loss_last": round(metrics["loss_history"][-1][1], 4),
        f"{split}_vrmse_ar": round(mean["input"], 4),
        f"{split}_vrmse_refined": round(mean["refined"], 4),
        f"{split}_vrmse_persistence": round(mean["persistence"], 4),
    }


def stage_evaluate(ctx) -> dict[str, Any]:
    """VRMSE per dataset, field and horizon beside persistence, copy-tokens and the tokenizer
    ceiling."""
    _needs(ctx, "ar_run", "shards")
    out = ctx.out / "evaluate"
    metrics = evaluate(
        ctx.state["ar_run"],
        ctx.state["shards"],
        EVAL_HORIZONS,
        out,
        split="test",
        max_windows=EVAL_MAX_WINDOWS,
        sampling=Sampling(ar=ARSampling(refiner=ctx.state.get("refiner") or "auto")),
        seed=ctx.seed,
    )
    ctx.state["evaluate"] = str(out)
    rel = out.relative_to(ctx.out)
    ctx.figures.append(
        (
            "VRMSE vs rollout step (test windows; 1.0 = the spatial mean)",
            str(rel / "vrmse_vs_horizon.png"),
        )
    )
    for name in metrics["vrmse"]:
        ctx.figures.append(
            (f"Rollout {name}: truth | prediction | error", str(rel / f"rollout_{name}.png"))
        )
    result: dict[str, Any] = {"windows": sum(metrics["n_windows"].values())}
    for method, per in metrics["overall"].items():
        for h in (str(EVAL_HORIZONS[0]), str(EVAL_HORIZONS[-1])):
            result[f"{method}_{h}"] = round(per[h], 4)
    default, h1 = metrics["default_method"], str(EVAL_HORIZONS[0])
    result["default_method"] = default
    versus, learned = [], []
    for name, d in metrics["vrmse"].items():
        # The transformer alone (raw) against copy-tokens, its initialisation: has it learned
        # anything?
        raw, copy, dflt = (
            d["mean"][m][h1] for m in (metrics["methods"][0], "copy_tokens", default)
        )
        result.update(
            {f"{name}_raw_{h1}": round(raw, 4), f"{name}_copy_tokens_{h1}": round(copy, 4)}
        )
        result[f"{name}_default_{h1}"] = round(dflt, 4)
        learned.append(
            f"{name}: raw {raw:.3f}, copy-tokens {copy:.3f} ({raw / copy:.2f}x), default {dflt:.3f}"
        )
        ours, floor = d["mean"][default][h1], d["mean"]["persistence"][h1]
        result[f"{name}_vs_persistence_{h1}"] = round(ours / floor, 3)
        verdict = "beats" if ours < floor else "does not beat"
        versus.append(
            f"{name}: {ours:.3f} vs {floor:.3f}, {verdict} it ({100 * (1 - ours / floor):+.0f} %)"
        )
    ctx.notes.append(
        "Evaluate: VRMSE 1.0 is the spatial-mean predictor; persistence (repeat the last frame) is the floor a "
        "forecaster must clear, and beating it means nothing once persistence itself is above 1. The model as a "
        f"user gets it ({default}) against persistence at the next step — "
        + "; ".join(versus)
        + f" (details: "
        f"{rel}/report.md)."
    )
    ctx.notes.append(
        "The transformer alone (raw, no refiner) against copy-tokens (repeat the last token frame, what the "
        f"untrained model predicts) and the default, h={h1} VRMSE — " + "; ".join(learned) + "."
    )
    return result

"""Before/after scoring of a fine-tune on the new data's test split, and its report.

Every model is rolled out greedily from the same test windows
(``physfm.eval.windows.evaluation_windows``) and scored with The Well's VRMSE
(``tokenizer.metrics.vrmse``) per horizon, mean over fields; persistence (repeat the last context
frame) and the tokenizer ceiling (the true future's own tokens decoded with the first model's
tokenizer: no token model with that tokenizer can do better) are scored on the same windows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_pipelines.atomic import atomic_write_text
from data_pipelines.run_record import write_metrics
from physfm.eval.plots import METHOD_STYLE, loss_vs_step, vrmse_vs_horizon
from physfm.eval.windows import evaluation_windows
from physfm.inference import PhysicsModel
from tokenizer.metrics import vrmse


def evaluate_models(
    models: dict[str, Path],
    shards: Path,
    datasets: list[str],
    horizons: list[int],
    max_windows: int,
    split: str = "test",
    batch_size: int = 16,
) -> dict[str, Any]:
    """{"vrmse": {dataset: {method: {h: v}}}, "curves": {dataset: {method: [v per step]}},
    "overall": ...}."""
    horizon = max(horizons)
    sums: dict[str, dict[str, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    for method, location in models.items():
        pm = PhysicsModel.from_pretrained(location, refiner=False)
        n = pm.n_spatial_dims
        for batch in evaluation_windows(
            shards,
            split,
            horizon,
            batch_size=batch_size,
            max_windows=max_windows,
            datasets=datasets,
        ):
            per = sums.setdefault(batch.dataset, {})
            pred = pm.rollout(batch.context, horizon, batch.dataset)
            per[method] = per.get(method, 0) + vrmse(pred, batch.truth, n).mean(-1).sum(0)  # [H]
            if method == next(iter(models)):
                persistence = batch.context[:, -1:].expand_as(batch.truth)
                per["persistence"] = per.get("persistence", 0) + vrmse(
                    persistence, batch.truth, n
                ).mean(-1).sum(0)
                ceiling = pm.tokenizer_ceiling(batch.context, batch.truth, batch.dataset)
                per["tokenizer_ceiling"] = per.get("tokenizer_ceiling", 0) + vrmse(
                    ceiling, batch.truth, n
                ).mean(-1).sum(0)
                counts[batch.dataset] = counts.get(batch.dataset, 0) + batch.context.shape[0]
    curves = {
        name: {m: [float(v) for v in s / counts[name]] for m, s in per.items()}
        for name, per in sums.items()
    }
    table = {
        name: {m: {str(h): c[h - 1] for h in horizons} for m, c in per.items()}
        for name, per in curves.items()
    }
    methods = list(next(iter(curves.values())))
    overall = {
        m: {str(h): sum(table[d][m][str(h)] for d in table) / len(table) for h in horizons}
        for m in methods
    }
    return {
        "split": split,
        "horizons": horizons,
        "n_windows": counts,
        "vrmse": table,
        "curves": curves,
        "overall": overall,
    }


METHOD_LABELS = {
    "finetuned": "pretrained + fine-tuned (RUN/model)",
    "finetuned_discarded": "fine-tuned weights (discarded: worse on valid)",
    "pretrained": "pretrained, before fine-tuning",
    "scratch": "same budget from scratch",
    "persistence": "persistence",
    "tokenizer_ceiling": "tokenizer ceiling (true tokens decoded)",
}


def write_report(out: Path, metrics: dict[str, Any]) -> None:
    """metrics.json, report.md and vrmse_vs_horizon.png in ``out`` (the training summary stays
    inside)."""
    METHOD_STYLE.setdefault("finetuned", ("pretrained + fine-tuned", "C0", "-"))
    METHOD_STYLE.setdefault("pretrained", ("pretrained (before)", "C7", ":"))
    METHOD_STYLE.setdefault("scratch", ("scratch (same steps)", "C3", "-"))
    METHOD_STYLE.setdefault("finetuned_discarded", ("fine-tuned (discarded)", "C1", "--"))
    metrics["figures"] = [
        vrmse_vs_horizon(
            metrics["curves"],
            out / "vrmse_vs_horizon.png",
            title=f"{metrics['split']} split after fine-tuning",
        ).name
    ]
    runs = {
        method: {"train": s.get("loss_history") or [], "valid": s.get("val_loss_history") or []}
        for method, s in (
            ("finetuned", metrics.get("train")),
            ("scratch", metrics.get("scratch_train")),
        )
        if s
    }
    metrics["learning"] = {m: learning_summary(c["train"], c["valid"]) for m, c in runs.items()}
    if any(c["train"] or c["valid"] for c in runs.values()):
        metrics["figures"].append(
            loss_vs_step(runs, out / "loss_vs_step.png", title="learning curves").name
        )
    write_metrics(out / "metrics.json", metrics)
    horizons = metrics["horizons"]
    lines = [
        f"# fine-tune run {out.name}",
        "",
        f"From `{metrics['from']}` on `{metrics['data']}` ({', '.join(metrics['datasets'])}); mode "
        f"**{metrics['mode']}**, {metrics['steps']} optimizer steps, "
        f"{metrics['trainable_params']['trainable']:,} of {metrics['trainable_params']['total']:,} parameters "
        "trained.",
        "",
        "Seconds: " + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in metrics["seconds"].items()) + ".",
        "",
        *(
            [
                'Tokens: skip decisions on (a token is "no change" wherever that codes its patch '
                "better than the encoder; the ceiling is never above persistence).",
                "",
            ]
            if metrics.get("tokenizer_skip_coding")
            else []
        ),
        f"VRMSE on the {metrics['split']} split (mean over fields and datasets; 1.0 = the spatial mean):",
        "",
        "| model | " + " | ".join(f"h={h}" for h in horizons) + " |",
        "|---|" + "---:|" * len(horizons),
    ]
    for method, per in metrics["overall"].items():
        lines.append(
            f"| {METHOD_LABELS.get(method, method)} | "
            + " | ".join(f"{per[str(h)]:.4f}" for h in horizons)
            + " |"
        )
    lines += ["", *_selection_lines(metrics)]
    lines += _learning_lines(metrics)
    lines += [
        "",
        "![VRMSE vs horizon](vrmse_vs_horizon.png)",
        "",
        "The scratch model (with `--compare-scratch`) trains the same architecture and step budget from random "
        "init, with the same adapted tokenizer, so it measures what the pretrained transformer weights are worth.",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def _selection_lines(metrics: dict[str, Any]) -> list[str]:
    """How the run chose its weights: best checkpoint, early stop, fine-tuned vs zero-shot."""
    best, sel = metrics.get("best_step"), metrics.get("selection") or {}
    lines = []
    if best is not None:
        stop = " (stopped early)" if metrics.get("stopped_early") else ""
        lines.append(
            f"Fine-tuned weights: the lowest validation loss, at step {best} of "
            f"{metrics['steps']}{stop}."
        )
    if sel.get("split"):
        h = sel["metric"].removeprefix("vrmse_h")
        lines.append(
            f"Kept: **{metrics['kept']}** (h={h} VRMSE on the {sel['split']} split: fine-tuned "
            f"{sel[f'finetuned_vrmse_{h}']:.4f}, zero-shot {sel[f'zeroshot_vrmse_{h}']:.4f}, "
            f"persistence {sel[f'persistence_vrmse_{h}']:.4f}); `model/` holds the kept weights."
        )
    else:
        lines.append(f"Kept: **{metrics.get('kept', 'finetuned')}** (not compared on validation).")
    return lines


# After its best validation, a run "fits its training data" when its training loss fell by this
# share while its validation loss ended this share above the best (token cross-entropy).
OVERFIT_MARGIN = 0.1


def learning_summary(
    train: list[tuple[int, float]], valid: list[tuple[int, float]]
) -> dict[str, Any] | None:
    """Where a run's validation loss was lowest and what training did after it → {best_step,
    best_valid, last_step, last_valid, train_at_best, train_last, overfit}, or None with fewer
    than two validations. ``train_at_best``: the last training loss logged at or before the best
    step (the first logged when none was)."""
    if len(valid) < 2 or not train:
        return None
    best_step, best = min(valid, key=lambda p: p[1])
    last_step, last = valid[-1]
    upto = [loss for step, loss in train if step <= best_step]
    train_at_best = upto[-1] if upto else train[0][1]
    train_last = train[-1][1]
    overfit = (
        last_step > best_step
        and last > best * (1 + OVERFIT_MARGIN)
        and train_last < train_at_best * (1 - OVERFIT_MARGIN)
    )
    return {
        "best_step": best_step,
        "best_valid": round(best, 4),
        "last_step": last_step,
        "last_valid": round(last, 4),
        "train_at_best": round(train_at_best, 4),
        "train_last": round(train_last, 4),
        "overfit": overfit,
    }


def _learning_lines(metrics: dict[str, Any]) -> list[str]:
    """One line per trained model: where its validation loss bottomed out and, when training went
    on fitting the training data past it, that more steps will not help."""
    lines = []
    for method, s in (metrics.get("learning") or {}).items():
        if not s:
            continue
        name = "Fine-tuned" if method == "finetuned" else "Scratch"
        text = (
            f"{name} learning curve: validation loss lowest at step {s['best_step']} "
            f"({s['best_valid']:.3f})"
        )
        if s["overfit"]:
            text += (
                f"; by step {s['last_step']} training loss fell {s['train_at_best']:.3f} → "
                f"{s['train_last']:.3f} while validation loss rose to {s['last_valid']:.3f}: the run "
                "fits its training trajectories, not the dynamics, so a longer budget will not help; "
                "more training trajectories or fewer trainable parameters (`finetune.mode=lora` or "
                "`freeze`) might"
            )
        else:
            text += f", {s['last_valid']:.3f} at the last validation (step {s['last_step']})"
        lines.append(text + ".")
    if lines:
        lines.insert(0, "")
    if "loss_vs_step.png" in metrics.get("figures", []):
        lines += ["", "![loss vs step](loss_vs_step.png)"]
    return lines

"""Which weights a fine-tune ends with.

Two choices, both on the new data's *validation* split (the test split only scores the result):

1. during training, Lightning keeps the checkpoint with the lowest validation loss (``RUN/best``)
   and early stopping ends the run after ``finetune.patience`` validations without a lower one;
   that checkpoint, not the last step's, is the fine-tuned model;
2. after training, the fine-tuned and the zero-shot model (the pretrained weights before
   fine-tuning) are rolled out one step from the same validation windows and the one with the lower
   VRMSE becomes ``RUN/model`` (``finetune.keep_better``). One-step VRMSE and not the validation
   loss: the loss of the zero-shot model is never measured during training, and token
   cross-entropy is not the field error a user reads (a fine-tune can lower one and raise the
   other), so the comparison is made in the same unit as the report's h=1 column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_pipelines.manifest import Manifest
from physfm.core.checkpoint import checkpoint_step, list_checkpoints
from physfm.train.callbacks import early_stopping, keep_best_checkpoint
from physfm.train.finetune_eval import evaluate_models

BEST_DIR = "best"  # RUN/best/step=N.ckpt: the checkpoint with the lowest validation loss
SELECTION_HORIZON = 1


def selection_callbacks(run: Path, patience: int, validates: bool) -> list[Any]:
    """Best-checkpoint keeping (whenever the run validates) and early stopping (``patience`` > 0)."""
    if not validates:
        return []
    callbacks = [keep_best_checkpoint(run / BEST_DIR)]
    if patience > 0:
        callbacks.append(early_stopping(patience))
    return callbacks


def best_checkpoint(run: Path) -> Path | None:
    """The run's lowest-validation-loss checkpoint, or None (no validation ran)."""
    found = list_checkpoints(run / BEST_DIR)
    return found[-1] if found else None


def best_step(run: Path) -> int | None:
    best = best_checkpoint(run)
    return checkpoint_step(best) if best is not None else None


def compare_on_validation(
    finetuned: Path,
    zeroshot: Path,
    shards: Path,
    datasets: list[str],
    max_windows: int,
) -> dict[str, Any]:
    """h=1 VRMSE of both models on the validation split (mean over the new datasets) and which
    one to keep: the fine-tuned model only when strictly better. Without a validation split the
    fine-tuned model is kept and ``split`` is None."""
    split = Manifest.load(shards).splits.get("valid")
    if split is None or not split.n_samples:
        return {"split": None, "kept": "finetuned"}
    result = evaluate_models(
        {"finetuned": finetuned, "zeroshot": zeroshot},
        shards,
        datasets,
        [SELECTION_HORIZON],
        max_windows,
        split="valid",
    )
    h = str(SELECTION_HORIZON)
    scores = {m: result["overall"][m][h] for m in ("finetuned", "zeroshot", "persistence")}
    kept = "finetuned" if scores["finetuned"] < scores["zeroshot"] else "zeroshot"
    return {
        "split": "valid",
        "metric": f"vrmse_h{h}",
        "n_windows": result["n_windows"],
        **{f"{m}_vrmse_{h}": round(v, 6) for m, v in scores.items()},
        "kept": kept,
    }

"""The quickstart's training stages: the tiny tokenizer (train, evaluate, encode) and the tiny AR
model.

Both are capped by wall-clock time as well as steps, so the whole quickstart stays within its budget
on a slow or busy machine; the reports say how many steps each one reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_pipelines.config import load_config
from physfm.train.pretrain import load_pretrain_config, run_pretrain
from tokenizer.encode import encode_shards
from tokenizer.evaluate import evaluate_tokenizer
from tokenizer.training import TokenizerTrainConfig, train_tokenizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # works from any working directory

TOKENIZER_SECONDS = 100  # tokenizer training budget
PRETRAIN_SECONDS = 150  # AR pretraining budget
# Conditional tokens (each frame coded given the previous one): the forecasting default
# bench/forecast.py measured against plain tokens. The AR model's next-frame prediction comes with
# configs/model/tiny.yaml.
TOKENIZER_CONFIG = "tiny_conditional.yaml"


def stage_tokenizer(ctx) -> dict[str, Any]:
    """Train the tiny FSQ tokenizer on the quickstart shards, evaluate it, and encode token
    shards."""
    cfg = load_config(
        TokenizerTrainConfig,
        CONFIGS / "tokenizer" / TOKENIZER_CONFIG,
        [
            f"data.shards={ctx.state['shards']}",
            f"out={ctx.out / 'tokenizer'}",
            f"seed={ctx.seed}",
            f"trainer.max_time_s={TOKENIZER_SECONDS}",  # the LR schedule follows the time budget
        ],
    )
    import torch

    threads = torch.get_num_threads()
    try:
        ckpt = train_tokenizer(cfg)
    finally:
        # the tiny tokenizer trains single-threaded; later stages use all cores
        torch.set_num_threads(threads)
    # 4 batches of each dataset (the cap is per dataset), so the headline vrmse_max covers every
    # system.
    metrics = evaluate_tokenizer(
        ckpt,
        ctx.state["shards"],
        ctx.out / "tokenizer-eval",
        split="valid",
        max_batches=4,
        n_plots=1,
    )
    tokens = encode_shards(ckpt, ctx.state["shards"], ctx.out / "tokens")
    ctx.state.update(tokenizer=str(ckpt), tokens=str(tokens))
    for png in sorted((ctx.out / "tokenizer-eval").glob("*.png"))[:2]:
        ctx.figures.append(
            (
                f"Tokenizer reconstruction ({png.stem}): original | reconstruction | error",
                str(png.relative_to(ctx.out)),
            )
        )
    summary = {"checkpoint": str(ckpt.relative_to(ctx.out))}
    overall = metrics.get("overall", {})
    for key in ("vrmse_max", "baseline_vrmse_max", "code_usage", "perplexity"):
        if key in overall:
            summary[key] = round(float(overall[key]), 4)
    # each system's own worst field beside the headline
    for name, entry in metrics["datasets"].items():
        summary[f"vrmse_max_{name}"] = round(
            max(field["vrmse"] for field in entry["fields"].values()), 4
        )
    return summary


def stage_pretrain(ctx) -> dict[str, Any]:
    """Pretrain the tiny AR transformer on the quickstart token shards."""
    cfg = load_pretrain_config(
        CONFIGS / "pretrain" / "tiny.yaml",
        [
            f"data.tokens=[{ctx.state['tokens']}]",
            f"tokenizer={ctx.state['tokenizer']}",
            f"out={ctx.out / 'pretrain'}",
            f"seed={ctx.seed}",
            "trainer.max_steps=400",
            f"trainer.max_time_s={PRETRAIN_SECONDS}",
            "trainer.checkpoint_every=50",
            "trainer.val_every=100",
            "trainer.progress_bar=false",
            "resume=none",
        ],
    )
    out = run_pretrain(cfg)
    ctx.state["ar_run"] = str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics.get("loss_history") or []
    summary = {"steps": metrics["steps"], "params_m": round(metrics["n_params"] / 1e6, 2)}
    if history:
        summary.update(loss_first=round(history[0][1], 3), loss_last=round(history[-1][1], 3))
    for key in ("val_loss", "perf_tokens_per_s", "perf_mfu"):
        if key in metrics:
            summary[key] = round(metrics[key], 4)
    return summary

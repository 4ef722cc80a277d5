"""The quickstart's fine-tune stage: the pretrained model (gray_scott2d + navier_stokes2d) adapted
to a held-out system, burgers1d — new field, new resolution, 1D (lifted onto the 2D tokenizer) —
beside the same budget from scratch. Sized for well under a minute on 2 cores (16 tokens per
frame)."""

from __future__ import annotations

import json
from typing import Any

from data_pipelines.simulators import simulate_dataset
from physfm.quickstart.train import CONFIGS
from physfm.train.finetune import load_finetune_config, run_finetune

HELD_OUT = ("burgers1d", dict(n_traj=6, n_steps=24, resolution=32))
FINETUNE_OVERRIDES = [
    "trainer.max_steps=40",
    "trainer.checkpoint_every=40",
    "finetune.tokenizer_steps=40",
    "finetune.eval_horizons=[1,4]",
    "finetune.eval_max_windows=6",
    "finetune.compare_scratch=true",
]


def stage_finetune(ctx) -> dict[str, Any]:
    if "ar_run" not in ctx.state:
        raise RuntimeError("quickstart: the fine-tune stage needs ar_run from the pretrain stage")
    system, sizes = HELD_OUT
    data = simulate_dataset(
        system, ctx.out / "data" / system, seed=ctx.seed, overwrite=True, **sizes
    )
    cfg = load_finetune_config(
        CONFIGS / "finetune" / "recipe.yaml",
        [
            f"finetune.init={ctx.state['ar_run']}",
            f"finetune.data={data}",
            f"out={ctx.out / 'finetune'}",
            f"seed={ctx.seed}",
            *FINETUNE_OVERRIDES,
        ],
    )
    out = run_finetune(cfg)

    m = json.loads((out / "metrics.json").read_text())
    rel = out.relative_to(ctx.out)
    ctx.figures.append(
        (
            f"Fine-tune on held-out {system}: VRMSE vs rollout step",
            str(rel / "vrmse_vs_horizon.png"),
        )
    )
    result = {"held_out": system, "steps": m["steps"], "kept": m["kept"]}
    for method, per in m["overall"].items():
        for h, v in per.items():
            result[f"{method}_{h}"] = round(v, 4)
    ctx.notes.append(
        f"Fine-tune: {system} was never seen in pretraining; the tokenizer got a new stem/head "
        f"(trunk frozen{', skip decisions on' if m.get('tokenizer_skip_coding') else ''}) and the AR model up to {m['steps']} steps of the recipe "
        f"(configs/finetune/recipe.yaml); kept: {m['kept']}; see {rel}/report.md.\n\n"
        + comparison_table(m)
    )
    return result


def comparison_table(m: dict[str, Any]) -> str:
    """Per held-out dataset, test VRMSE of fine-tuned (what ``RUN/model`` holds), the trained weights
    keep-better discarded (when it kept zero-shot), zero-shot, scratch and persistence."""
    horizons = [str(h) for h in m["horizons"]]
    order = ("finetuned", "finetuned_discarded", "pretrained", "scratch", "persistence")
    methods = [k for k in order if k in m["overall"]]
    kept_zeroshot = m.get("kept") == "zeroshot"
    label = {
        "pretrained": "zero-shot",
        "finetuned": "fine-tuned (kept: zero-shot)" if kept_zeroshot else "fine-tuned",
        "finetuned_discarded": "fine-tuned, trained weights (discarded)",
    }
    lines = [
        "| held out | model | " + " | ".join(f"h={h}" for h in horizons) + " |",
        "|---|---|" + "---:|" * len(horizons),
    ]
    for dataset, per in m["vrmse"].items():
        for method in methods:
            lines.append(
                f"| {dataset} | {label.get(method, method)} | "
                + " | ".join(f"{per[method][h]:.4f}" for h in horizons)
                + " |"
            )
    return "\n".join(lines)

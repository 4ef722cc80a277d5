"""Training-step overhead: physfm's Lightning training vs a bare PyTorch loop, and CPU MFU.

Both sides train the same model (configs/model/tiny.yaml unless --model), with the same batch size,
window, AdamW settings and gradient clipping, for the same number of optimiser steps, alternating
bare/physfm runs ``--repeats`` times in this one process (these machines are noisy; compare
medians). The physfm side is the real path a user runs — ``run_pretrain`` with its token loader,
loss masking, LR schedule, non-finite guard, logging and checkpointing switched off only where the
bare loop has no equivalent (checkpoints, validation) — so the ratio is what the platform costs.
MFU divides achieved FLOP/s (the model's 6N + attention count) by a matmul peak measured here.

Then *learning per CPU second* (issue 23, lever 2): the bare loop in next-frame mode as
bench/forecast.py trains it (conditional tokens: every frame after the second is a target), one
variant per row, each a config choice: the token window (``physfm tokenizer encode --n-output``,
``model.max_frames``), the token grid (the tokenizer's ``spatial_compression``: 8 gives 8x8 tokens
at 64²), ``strategy.precision=bf16-mixed`` (autocast) and ``torch.compile`` of the model. Rows
report tokens/s, optimiser steps/s and *target* tokens/s (the tokens that carry loss: the useful
gradient) and target frames/s (training examples), and their ratios to the default row, measured in
turn.

    python bench/train_step.py [--steps 30] [--repeats 2] [--batch-size 8] [--model configs/model/tiny.yaml]
                               [--variant-steps 4] [--variant-batch 8]

Last line: JSON with ``overhead_ratio`` (physfm tokens/s ÷ bare tokens/s; target ≥ 0.95),
``cpu_mfu`` and ``variants`` {name: {tokens_per_s, steps_per_s, target_tokens_per_s,
target_frames_per_s, *_vs_default}}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

from data_pipelines.config import load_config
from data_pipelines.synthetic import make_token_shards
from physfm.models.ar import IGNORE_INDEX, PhysicsTransformer
from physfm.models.trunk import ModelConfig
from physfm.train.callbacks import measure_matmul_peak
from physfm.train.module import lr_lambda, window_to_sequence
from physfm.train.pretrain import load_pretrain_config, run_pretrain

N_FRAMES, N_CONTEXT = 5, 4  # the quickstart window: 4 context + 1 target frame


def bare_loop(cfg: ModelConfig, batch_size: int, steps: int, seed: int) -> float:
    """Tokens/s of a plain loop: forward, masked next-token loss, backward, clip, AdamW,
    schedule."""
    torch.manual_seed(seed)
    model = PhysicsTransformer(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, 20, steps, 0.1))
    grid = tuple(cfg.grid_shape)
    T = math.prod(grid)
    gen = torch.Generator().manual_seed(seed)
    batches = [
        torch.randint(0, cfg.vocab_size, (batch_size, N_FRAMES * T), generator=gen)
        for _ in range(4)
    ]
    ids = torch.zeros(batch_size, dtype=torch.long)
    start = 0.0
    for step in range(steps + 1):
        if step == 1:  # the first step includes allocation warm-up, as on the physfm side
            start = time.perf_counter()
        idx = batches[step % len(batches)]
        targets = idx.clone()
        targets[:, : N_CONTEXT * T] = IGNORE_INDEX
        _, loss = model(idx, grid, ids, targets=targets, return_logits=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch_size * N_FRAMES * T / (time.perf_counter() - start)


def physfm_run(
    model_yaml: str, tokens: Path, out: Path, batch_size: int, steps: int, seed: int
) -> float:
    base = out.parent / "pretrain.yaml"
    base.write_text(f"model:\n  include: {Path(model_yaml).resolve()}\n  max_frames: {N_FRAMES}\n")
    cfg = load_pretrain_config(
        str(base),
        [
            f"data.tokens=[{tokens}]",
            f"out={out}",
            f"seed={seed}",
            f"data.batch_size={batch_size}",
            "data.num_workers=1",
            f"trainer.max_steps={steps + 1}",
            f"trainer.log_every={steps}",
            f"trainer.checkpoint_every={10 * steps}",
            "trainer.val_every=0",
            "data.val_batches=0",
            "trainer.logger=none",
            "trainer.progress_bar=false",
            "optim.lr=1e-3",
            "optim.warmup_steps=20",
            "strategy.name=single",
        ],
    )
    from physfm.train import callbacks as training

    monitor: list = []
    original = training.ThroughputMonitor.__init__

    def capture(self, *args, **kwargs):  # keep a handle on the run's monitor to read its figures
        original(self, *args, **kwargs)
        monitor.append(self)

    training.ThroughputMonitor.__init__ = capture
    try:
        run_pretrain(cfg)
    finally:
        training.ThroughputMonitor.__init__ = original
    return monitor[0].last["perf/tokens_per_s"]


@dataclass(frozen=True)
class Variant:
    """One way to spend a training step (each is a config choice, see the module docstring)."""

    name: str
    n_context: int = N_CONTEXT
    n_output: int = N_FRAMES - N_CONTEXT
    grid: tuple[int, ...] | None = None  # None: the model config's
    bf16: bool = False
    compile: bool = False


VARIANTS = (
    Variant("default: 4 + 1 frames, 16x16 tokens, fp32"),
    Variant("4 + 4 frame windows", n_output=4),
    Variant("2 + 1 frame windows (fewer context frames)", n_context=2),
    Variant("8x8 tokens per frame (spatial compression 8)", grid=(8, 8)),
    Variant("bf16 autocast (strategy.precision=bf16-mixed)", bf16=True),
    Variant("torch.compile", compile=True),
)


def variant_rates(
    base: ModelConfig, v: Variant, batch_size: int, steps: int, seed: int
) -> dict[str, float]:
    """The next-frame training step of ``v``: tokens/s, optimiser steps/s and target (loss-carrying)
    tokens/s. Conditional tokens leave the first two frames without loss (physfm/train/module.py
    ``loss``)."""
    n_frames = v.n_context + v.n_output
    cfg = dataclasses.replace(
        base,
        prediction="next_frame",
        max_frames=n_frames,
        grid_shape=list(v.grid or base.grid_shape),
    )
    torch.manual_seed(seed)
    model = PhysicsTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    forward = torch.compile(model) if v.compile else model
    grid, T = tuple(cfg.grid_shape), math.prod(cfg.grid_shape)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch_size, n_frames, *grid), generator=gen)
    idx, targets, grid = window_to_sequence(tokens, 2 if n_frames > 2 else 1)
    ids = torch.zeros(batch_size, dtype=torch.long)
    warmup = 2 if v.compile else 1  # compilation happens in the first step(s)
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.bf16):
            _, loss = forward(idx, grid, ids, targets=targets, return_logits=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    n_targets = int((targets != IGNORE_INDEX).sum())
    return {
        "tokens_per_s": steps * batch_size * n_frames * T / seconds,
        "steps_per_s": steps / seconds,
        "target_tokens_per_s": steps * n_targets / seconds,
        # frames learned from: training examples
        "target_frames_per_s": steps * n_targets / T / seconds,
    }


def run_variants(
    cfg: ModelConfig, batch_size: int, steps: int, seed: int
) -> dict[str, dict[str, float]]:
    rates = {v.name: variant_rates(cfg, v, batch_size, steps, seed) for v in VARIANTS}
    default = rates[VARIANTS[0].name]
    print(
        f"\nnext-frame training step, batch {batch_size}, {steps} timed steps per variant (bare loop)"
    )
    print(
        f"{'variant':<50}{'tokens/s':>10}{'steps/s':>9}{'target tok/s':>14}{'target frames/s':>17}"
    )
    out = {}
    ratios = ("tokens_per_s", "target_tokens_per_s", "target_frames_per_s")
    for name, r in rates.items():
        print(
            f"{name:<50}{r['tokens_per_s']:>10.0f}{r['steps_per_s']:>9.3f}{r['target_tokens_per_s']:>14.0f}"
            f"{r['target_frames_per_s']:>17.2f}"
        )
        out[name] = {k: round(x, 3) for k, x in r.items()}
        out[name].update({f"{k}_vs_default": round(r[k] / default[k], 2) for k in ratios})
    print(
        "x default: "
        + "; ".join(f"{n}: {o['target_frames_per_s_vs_default']}" for n, o in out.items())
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="configs/model/tiny.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--repeats", type=int, default=2, help="physfm-vs-bare runs (0 = skip that table)"
    )
    parser.add_argument(
        "--variant-steps", type=int, default=4, help="timed steps per variant (0 = skip them)"
    )
    parser.add_argument("--variant-batch", type=int, default=8, help="batch size of the variants")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0 = torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from physfm.models.trunk import ModelConfig as MC

    cfg = load_config(MC, args.model)
    cfg.max_frames = max(cfg.max_frames, N_FRAMES)
    result = measure_overhead(args, cfg) if args.repeats else {}
    if args.variant_steps:
        result["variants"] = run_variants(cfg, args.variant_batch, args.variant_steps, args.seed)
    print(json.dumps(result))


def measure_overhead(args: argparse.Namespace, cfg: ModelConfig) -> dict:
    """physfm's Lightning run vs the bare loop, alternating ``--repeats`` times; prints the
    table."""
    peak = measure_matmul_peak(seconds=1.0)
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tokens = make_token_shards(
            Path(tmp) / "tokens",
            n_windows=256,
            n_frames=N_FRAMES,
            n_context=N_CONTEXT,
            grid=tuple(cfg.grid_shape),
            vocab=cfg.vocab_size,
            datasets=("bench",),
        )
        for r in range(args.repeats):
            bare.append(bare_loop(cfg, args.batch_size, args.steps, args.seed))
            ours.append(
                physfm_run(
                    args.model,
                    tokens,
                    Path(tmp) / f"run{r}",
                    args.batch_size,
                    args.steps,
                    args.seed,
                )
            )
    model = PhysicsTransformer(cfg)
    flops_per_token = model.flops_per_token(N_FRAMES * math.prod(cfg.grid_shape))
    bare_med, ours_med = statistics.median(bare), statistics.median(ours)
    result = {
        "overhead_ratio": round(ours_med / bare_med, 3),
        "cpu_mfu": round(ours_med * flops_per_token / peak, 3),
        "bare_tokens_per_s": round(bare_med, 1),
        "physfm_tokens_per_s": round(ours_med, 1),
        "bare_runs": [round(x, 1) for x in bare],
        "physfm_runs": [round(x, 1) for x in ours],
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "params_m": round(model.num_params() / 1e6, 2),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "window": [N_CONTEXT, N_FRAMES - N_CONTEXT],
        "grid": cfg.grid_shape,
        "seed": args.seed,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
    print(f"{'loop':<10}{'tokens/s (median)':>20}   runs")
    print(f"{'bare':<10}{bare_med:>20.0f}   {result['bare_runs']}")
    print(f"{'physfm':<10}{ours_med:>20.0f}   {result['physfm_runs']}")
    print(
        f"overhead ratio {result['overhead_ratio']:.3f} (target ≥ 0.95); CPU MFU {result['cpu_mfu']:.3f} of a "
        f"measured {result['matmul_peak_gflops']} GFLOP/s fp32 matmul peak; {result['params_m']} M params"
    )
    return result


if __name__ == "__main__":
    main()

"""Training-step overhead: physfm's Lightning training vs a bare PyTorch loop, and CPU MFU.

Both sides train the same model (configs/model/tiny.yaml unless --model), with the same batch size,
window, AdamW settings and gradient clipping, for the same number of optimiser steps, alternating
bare/physfm runs ``--repeats`` times in this one process (these machines are noisy; compare medians).
The physfm side is the real path a user runs — ``run_pretrain`` with its token loader, loss masking,
LR schedule, non-finite guard, logging and checkpointing switched off only where the bare loop has no
equivalent (checkpoints, validation) — so the ratio is what the platform costs.  MFU divides achieved
FLOP/s (the model's 6N + attention count) by a matmul peak measured here.

    python bench/train_step.py [--steps 30] [--repeats 2] [--batch-size 8] [--model configs/model/tiny.yaml]

Last line: JSON with ``overhead_ratio`` (physfm tokens/s ÷ bare tokens/s; target ≥ 0.95) and ``cpu_mfu``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

from data_pipelines.config import load_config
from data_pipelines.synthetic import make_token_shards
from physfm.models.ar import IGNORE_INDEX, PhysicsTransformer
from physfm.models.trunk import ModelConfig
from physfm.train.callbacks import measure_matmul_peak
from physfm.train.module import lr_lambda
from physfm.train.pretrain import load_pretrain_config, run_pretrain

N_FRAMES, N_CONTEXT = 5, 4  # the quickstart window: 4 context + 1 target frame


def bare_loop(cfg: ModelConfig, batch_size: int, steps: int, seed: int) -> float:
    """Tokens/s of a plain loop: forward, masked next-token loss, backward, clip, AdamW, schedule."""
    torch.manual_seed(seed)
    model = PhysicsTransformer(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, 20, steps, 0.1))
    grid = tuple(cfg.grid_shape)
    T = math.prod(grid)
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, cfg.vocab_size, (batch_size, N_FRAMES * T), generator=gen) for _ in range(4)]
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


def physfm_run(model_yaml: str, tokens: Path, out: Path, batch_size: int, steps: int, seed: int) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="configs/model/tiny.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from physfm.models.trunk import ModelConfig as MC

    cfg = load_config(MC, args.model)
    cfg.max_frames = max(cfg.max_frames, N_FRAMES)
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
            ours.append(physfm_run(args.model, tokens, Path(tmp) / f"run{r}", args.batch_size, args.steps, args.seed))
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
    print(json.dumps(result))


if __name__ == "__main__":
    main()

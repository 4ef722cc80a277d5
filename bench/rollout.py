"""Rollout speed: generation with the preallocated KV cache vs re-running the whole prefix per token.

Both sides generate the same token frame with the same model (configs/model/tiny.yaml unless --model:
3.7M parameters, 16x16 = 256 tokens per frame), greedy, from the same context of ``--context-frames``
frames, so the sequence reaches ``context + 1`` frames (4 by default); the cached side must give the same
tokens. Then the cached side alone at a batch of windows, the way ``physfm evaluate`` runs it. Speed
does not depend on the weights or the token values: the model is untrained and the context is random
token ids (seeded), so no data is simulated here.

    python bench/rollout.py [--context-frames 3] [--batch 1] [--batched 32] [--model configs/model/tiny.yaml]
                            [--prediction raster|next_frame]

Last line: JSON with ``kv_speedup`` (cached tokens/s ÷ uncached tokens/s at --batch; target >= 5).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from data_pipelines.config import load_config
from physfm.models.ar import PhysicsTransformer
from physfm.models.trunk import ModelConfig


def time_generation(model: PhysicsTransformer, context: torch.Tensor, use_cache: bool) -> tuple[torch.Tensor, float]:
    ids = torch.zeros(context.shape[0], dtype=torch.long)
    start = time.perf_counter()
    new = model.generate_frames(context, 1, ids, use_cache=use_cache)
    return new, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="configs/model/tiny.yaml")
    p.add_argument("--prediction", default="raster", choices=("raster", "next_frame"), help="generation mode")
    p.add_argument("--context-frames", type=int, default=3, help="context frames; the sequence reaches one more")
    p.add_argument("--batch", type=int, default=1, help="windows in the cached-vs-uncached comparison")
    p.add_argument("--batched", type=int, default=32, help="windows for the cached-only batched run (0 = skip)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # The KV cache's gain is in token-by-token (raster) decoding, T sequential steps per frame; next-frame
    # prediction (the tiny config's default) makes one forward per frame, where a one-frame rollout has
    # nothing to reuse. --prediction next_frame measures that mode instead.
    cfg = load_config(
        ModelConfig,
        args.model,
        [f"max_frames={max(args.context_frames + 1, 2)}", f"prediction={args.prediction}"],
    )
    torch.manual_seed(args.seed)
    model = PhysicsTransformer(cfg).eval()
    T = math.prod(cfg.grid_shape)
    gen = torch.Generator().manual_seed(args.seed)
    context = torch.randint(0, cfg.vocab_size, (args.batch, args.context_frames, *cfg.grid_shape), generator=gen)
    print(
        f"model {args.model}: {model.num_params() / 1e6:.2f}M parameters, grid {cfg.grid_shape} = {T} tokens/frame; "
        f"context {args.context_frames} frames → sequence of {args.context_frames + 1} frames "
        f"({cfg.n_cond_tokens + (args.context_frames + 1) * T} tokens); greedy; seed {args.seed}"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    time_generation(model, context[:, :1], True)  # warm-up: allocator, kernels
    cached, t_cached = time_generation(model, context, True)
    plain, t_plain = time_generation(model, context, False)
    n_tokens = args.batch * T
    rows = [
        ("no cache (full prefix per token)", t_plain, n_tokens / t_plain),
        ("preallocated KV cache", t_cached, n_tokens / t_cached),
    ]
    result = {
        "kv_speedup": round(t_plain / t_cached, 2),
        "tokens_match": bool(torch.equal(cached, plain)),
        "cached_tokens_per_s": round(n_tokens / t_cached, 1),
        "uncached_tokens_per_s": round(n_tokens / t_plain, 1),
        "batch": args.batch,
        "context_frames": args.context_frames,
        "tokens_per_frame": T,
        "n_params": model.num_params(),
    }
    if args.batched:
        big = torch.randint(0, cfg.vocab_size, (args.batched, args.context_frames, *cfg.grid_shape), generator=gen)
        _, t_big = time_generation(model, big, True)
        rows.append((f"KV cache, {args.batched} windows batched", t_big, args.batched * T / t_big))
        result.update(
            batched=args.batched,
            batched_tokens_per_s=round(args.batched * T / t_big, 1),
            batched_s_per_window_frame=round(t_big / args.batched, 3),
        )
    print(f"\n{'generation of one frame':<40} {'seconds':>9} {'tokens/s':>10}")
    for name, seconds, rate in rows:
        print(f"{name:<40} {seconds:>9.2f} {rate:>10.1f}")
    print(
        f"\nKV-cache speedup at batch {args.batch}: {result['kv_speedup']}x (target >= 5); "
        f"same tokens: {result['tokens_match']}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""Rollout speed: generation with the preallocated KV cache vs re-running the whole prefix per
token.

Both sides generate the same token frame with the same model (configs/model/tiny.yaml unless
--model: 3.7M parameters, 16x16 = 256 tokens per frame), greedy, from the same context of
``--context-frames`` frames, so the sequence reaches ``context + 1`` frames (4 by default); the
cached side must give the same tokens. Then the cached side alone at a batch of windows, the way
``physfm evaluate`` runs it. Speed does not depend on the weights or the token values: the model is
untrained and the context is random token ids (seeded), so no data is simulated here.

Then the whole field-space rollout the forecast bench times (``frames_per_s``): 64² fields, batch 1,
float32, the tiny conditional tokenizer (configs/tokenizer/tiny_conditional.yaml, 16x16 tokens per
frame) and the tiny next-frame model, ``--field-frames`` frames after 4 context frames, beside The
Well's FNO (bench/fno_baseline.py settings) rolling out the same frames. Two rows for our model,
same weights: trained on 4 + 1 frame windows (re-keys every frame: re-encode the window, re-prefill
4 x 256 tokens) and on 4 + ``--window-out`` windows (the KV cache extends by one frame's 256 tokens
between re-keys, ``physfm.models.ar.FrameStream``). Methods alternate ``--repeats`` times; each row
keeps its best run (the machine is shared; ratios are what to read). A third row extends the cache
with the tokenizer at 8x spatial compression (8x8 = 64 tokens per frame): what coarser tokens would
buy in speed (their reconstruction ceiling is the tokenizer bench's question).

    python bench/rollout.py [--context-frames 3] [--batch 1] [--batched 32] [--model configs/model/tiny.yaml]
                            [--prediction raster|next_frame] [--field-frames 16] [--window-out 4] [--repeats 2]

Last line: JSON with ``kv_speedup`` (cached tokens/s ÷ uncached tokens/s at --batch; target >= 5)
and ``field_rollout`` {frames_per_s: {rekey, extend, extend_8x8, fno}, extend_vs_rekey,
rekey_vs_fno, extend_vs_fno, extend_8x8_vs_fno}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from data_pipelines.config import load_config
from physfm.inference.ar_model import ARPhysicsModel
from physfm.models.ar import PhysicsTransformer
from physfm.models.trunk import ModelConfig
from tokenizer.model import DatasetSpec, Tokenizer
from tokenizer.training import TokenizerTrainConfig

ROOT = Path(__file__).resolve().parents[1]
N_INPUT = 4  # context frames of the forecast bench's windows


def time_generation(
    model: PhysicsTransformer, context: torch.Tensor, use_cache: bool
) -> tuple[torch.Tensor, float]:
    ids = torch.zeros(context.shape[0], dtype=torch.long)
    start = time.perf_counter()
    new = model.generate_frames(context, 1, ids, use_cache=use_cache)
    return new, time.perf_counter() - start


def best_rate(forecast: Callable[[int], object], n_frames: int) -> float:
    """Frames/s of ``forecast(n_frames)`` after a one-frame warm-up (as bench/forecast.py's
    rollout_rate)."""
    forecast(1)
    start = time.perf_counter()
    forecast(n_frames)
    return n_frames / (time.perf_counter() - start)


def our_model(compression: int, n_window: int, channels: list[str], seed: int) -> ARPhysicsModel:
    """The tiny conditional tokenizer at ``compression``x spatial compression (patches of that size,
    so the trunk works at token resolution, as in the tiny config) and the tiny next-frame model on
    its grid, trained (nominally) on 4 + ``n_window - 4`` frame windows."""
    torch.manual_seed(seed)
    tok_cfg = load_config(
        TokenizerTrainConfig,
        str(ROOT / "configs/tokenizer/tiny_conditional.yaml"),
        [
            f"model.spatial_compression={compression}",
            f"model.patch_size={compression}",
            "model.n_spatial_dims=2",
        ],
    ).model
    tok = Tokenizer(tok_cfg, {"bench": DatasetSpec(channels, [0.0] * 3, [1.0] * 3)}).eval()
    grid = 64 // compression
    cfg = load_config(
        ModelConfig,
        str(ROOT / "configs/model/tiny.yaml"),
        [
            "prediction=next_frame",
            f"max_frames={n_window}",
            f"grid_shape=[{grid}, {grid}]",
            "n_spatial_dims=2",
        ],
    )
    info = {"dataset_names": ["bench"], "n_context_frames": N_INPUT, "n_frames": n_window}
    return ARPhysicsModel(PhysicsTransformer(cfg).eval(), tok, info)


def fno_rollout(ctx: torch.Tensor) -> Callable[[int], torch.Tensor] | None:
    """bench/fno_baseline.py's FNO (untrained) rolled out from ``ctx`` as its fno_forecaster
    does."""
    try:
        # optional (the baselines extra), as in bench/fno_baseline.py
        from neuralop.models import FNO
    except ImportError:
        print("neuralop is not installed (pip install -e .[baselines]): no FNO row")
        return None
    from bench.fno_baseline import FNO_SETTINGS

    n_channels = ctx.shape[2]
    fno = FNO(
        n_modes=(FNO_SETTINGS["modes"],) * 2,
        in_channels=N_INPUT * n_channels,
        out_channels=n_channels,
        hidden_channels=FNO_SETTINGS["hidden_channels"],
    ).eval()

    @torch.no_grad()
    def rollout(horizon: int) -> torch.Tensor:
        z = ctx
        for _ in range(horizon):
            z = torch.cat([z, fno(z[:, -N_INPUT:].flatten(1, 2))[:, None]], 1)
        return z

    return rollout


FIELD_ROWS = {
    "rekey": "ours, 4 + 1 windows: re-key every frame",
    "extend": "ours, 4 + K windows: extend the KV cache, re-key every K",
    "extend_8x8": "ours, 8x8 tokens (compression 8), 4 + K windows",
    "fno": "FNO (The Well's settings)",
}


def field_rollout(n_frames: int, window_out: int, repeats: int, seed: int) -> dict:
    """Frames/s of the 64² field rollout: re-keying every frame, extending the KV cache (at 16x16
    and at 8x8 tokens per frame) and the FNO, alternating ``repeats`` times; each keeps its best
    run."""
    channels = ["density", "velocity_x", "velocity_y"]
    ctx = torch.randn(
        1, N_INPUT, len(channels), 64, 64, generator=torch.Generator().manual_seed(seed)
    )
    extend = our_model(4, N_INPUT + window_out, channels, seed)
    # The same weights told they were trained on 4 + 1 windows: what today's runs do.
    rekey = ARPhysicsModel(extend.model, extend.tokenizer, {**extend.info, "n_frames": N_INPUT + 1})
    coarse = our_model(8, N_INPUT + window_out, channels, seed)
    methods = {
        k: partial(pm.rollout, ctx, dataset="bench")
        for k, pm in (("rekey", rekey), ("extend", extend))
    }
    methods["extend_8x8"] = partial(coarse.rollout, ctx, dataset="bench")
    fno = fno_rollout(ctx)
    if fno is not None:
        methods["fno"] = fno
    rates: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for name, forecast in methods.items():
            rates[name].append(best_rate(forecast, n_frames))
    fps = {k: max(v) for k, v in rates.items()}
    out = {
        "frames_per_s": {k: round(v, 2) for k, v in fps.items()},
        "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "extend_vs_rekey": round(fps["extend"] / fps["rekey"], 2),
        "window": [N_INPUT, window_out],
        "frames": n_frames,
    }
    if "fno" in fps:
        out.update(
            {
                f"{k}_vs_fno": round(fps[k] / fps["fno"], 2)
                for k in ("rekey", "extend", "extend_8x8")
            }
        )
    print(
        f"\n64² field rollout, batch 1, float32, {n_frames} frames after {N_INPUT}; K = {window_out}"
    )
    print(f"({repeats} alternating runs, best of each)\n{'method':<58} {'frames/s':>9}")
    for key, value in fps.items():
        print(f"{FIELD_ROWS[key]:<58} {value:>9.2f}")
    print(
        ", ".join(
            f"{k} {v}x" for k, v in out.items() if k.endswith(("_vs_rekey", "_vs_fno"))
        ).replace("_vs_", " / ")
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="configs/model/tiny.yaml")
    p.add_argument(
        "--prediction", default="raster", choices=("raster", "next_frame"), help="generation mode"
    )
    p.add_argument(
        "--context-frames",
        type=int,
        default=3,
        help="context frames; the sequence reaches one more",
    )
    p.add_argument(
        "--batch", type=int, default=1, help="windows in the cached-vs-uncached comparison"
    )
    p.add_argument(
        "--batched", type=int, default=32, help="windows for the cached-only batched run (0 = skip)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument(
        "--field-frames", type=int, default=16, help="frames of the 64² field rollout (0 = skip it)"
    )
    p.add_argument(
        "--window-out",
        type=int,
        default=4,
        help="frames after the context in the extending windows",
    )
    p.add_argument(
        "--repeats", type=int, default=2, help="alternating runs of the field rollout's methods"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # The KV cache's gain is in token-by-token (raster) decoding, T sequential steps per frame;
    # next-frame prediction (the tiny config's default) makes one forward per frame, where a
    # one-frame rollout has nothing to reuse. --prediction next_frame measures that mode instead.
    cfg = load_config(
        ModelConfig,
        args.model,
        [f"max_frames={max(args.context_frames + 1, 2)}", f"prediction={args.prediction}"],
    )
    torch.manual_seed(args.seed)
    model = PhysicsTransformer(cfg).eval()
    T = math.prod(cfg.grid_shape)
    gen = torch.Generator().manual_seed(args.seed)
    context = torch.randint(
        0, cfg.vocab_size, (args.batch, args.context_frames, *cfg.grid_shape), generator=gen
    )
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
        big = torch.randint(
            0, cfg.vocab_size, (args.batched, args.context_frames, *cfg.grid_shape), generator=gen
        )
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
    if args.field_frames:
        result["field_rollout"] = field_rollout(
            args.field_frames, args.window_out, args.repeats, args.seed
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

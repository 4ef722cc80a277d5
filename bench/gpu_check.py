"""GPU checks that only a lent H100/H200 can answer (run by bench/gpu_check.sh; never in CI).

    python bench/gpu_check.py mfu [--config configs/model/1b.yaml] [--peak-tflops 989]
        bf16 training-step MFU of the model (the largest micro-batch/layer slice that fits), and whether
        scaled_dot_product_attention runs the flash kernel for its shapes.
    python bench/gpu_check.py zero --stage 2|3 [--out DIR]
        the real `physfm pretrain` path on CUDA with DeepSpeed ZeRO-<stage>, bf16-mixed, small config.
Each prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch


def flash_available(cfg) -> bool:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, cfg.n_head, 1024, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, cfg.n_head, 1024, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True)
        return True
    except RuntimeError:
        return False


def check_mfu(args) -> dict:
    from data_pipelines.config import load_config
    from physfm.models.ar import IGNORE_INDEX, PhysicsTransformer
    from physfm.models.trunk import ModelConfig

    cfg = load_config(ModelConfig, args.config)
    result = {
        "config": args.config,
        "flash_sdpa": flash_available(cfg),
        "gpu": torch.cuda.get_device_name(),
    }
    for n_layer in (cfg.n_layer, cfg.n_layer // 2, cfg.n_layer // 4):  # the largest slice that fits
        for batch in (8, 4, 2, 1):
            try:
                cfg.n_layer = n_layer
                torch.cuda.empty_cache()
                model = PhysicsTransformer(cfg).cuda()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
                grid = tuple(cfg.grid_shape)
                L = cfg.max_frames * math.prod(grid)
                idx = torch.randint(0, cfg.vocab_size, (batch, L), device="cuda")
                targets = idx.clone()
                targets[:, : (cfg.max_frames - 1) * math.prod(grid)] = IGNORE_INDEX
                ids = torch.zeros(batch, dtype=torch.long, device="cuda")
                times = []
                for _step in range(8):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        _, loss = model(idx, grid, ids, targets=targets, return_logits=False)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                step_s = sorted(times[3:])[len(times[3:]) // 2]
                tokens_per_s = batch * L / step_s
                mfu = model.estimate_mfu(tokens_per_s, args.peak_tflops * 1e12)
                result.update(
                    n_layer=n_layer,
                    full_depth=n_layer == load_config(ModelConfig, args.config).n_layer,
                    micro_batch=batch,
                    seq_len=L,
                    step_s=round(step_s, 4),
                    tokens_per_s=round(tokens_per_s),
                    bf16_mfu=round(mfu, 4),
                    params_b=round(model.num_params() / 1e9, 3),
                    max_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1),
                )
                return result
            except torch.OutOfMemoryError:
                del model
                continue
    result["error"] = "no slice fits"
    return result


def check_zero(args) -> dict:
    from data_pipelines.synthetic import make_token_shards
    from physfm.train.pretrain import load_pretrain_config, run_pretrain

    with tempfile.TemporaryDirectory() as tmp:
        tokens = make_token_shards(
            Path(tmp) / "tokens",
            n_windows=256,
            n_frames=5,
            n_context=4,
            grid=(16, 16),
            vocab=1000,
            datasets=("gpu",),
        )
        base = Path(tmp) / "c.yaml"
        base.write_text(
            f"model:\n  include: {Path('configs/model/small.yaml').resolve()}\n  max_frames: 5\n"
            "  grid_shape: [16, 16]\n"
        )
        cfg = load_pretrain_config(
            str(base),
            [
                f"data.tokens=[{tokens}]",
                f"out={Path(tmp) / 'run'}",
                "data.batch_size=8",
                "data.num_workers=2",
                "trainer.max_steps=30",
                "trainer.log_every=10",
                "trainer.checkpoint_every=30",
                "trainer.val_every=0",
                "trainer.logger=csv",
                "trainer.progress_bar=false",
                "strategy.name=deepspeed",
                f"strategy.zero_stage={args.stage}",
                "strategy.accelerator=gpu",
                "strategy.precision=bf16-mixed",
                "strategy.devices=1",
                "trainer.peak_tflops=989",
            ],
        )
        out = run_pretrain(cfg)
        metrics = json.loads((out / "metrics.json").read_text())
        history = metrics.get("loss_history") or []
        return {
            "zero_stage": args.stage,
            "steps": metrics["steps"],
            "loss_first": history[0][1] if history else None,
            "loss_last": history[-1][1] if history else None,
            "tokens_per_s": metrics.get("perf_tokens_per_s"),
            "mfu": metrics.get("perf_mfu"),
            "checkpoint": Path(metrics["last_checkpoint"]).name,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="check", required=True)
    p = sub.add_parser("mfu")
    p.add_argument("--config", default="configs/model/1b.yaml")
    p.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)"
    )
    p = sub.add_parser("zero")
    p.add_argument("--stage", type=int, choices=(2, 3), default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible")
    print(json.dumps(check_mfu(args) if args.check == "mfu" else check_zero(args)))


if __name__ == "__main__":
    main()

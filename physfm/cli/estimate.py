"""``physfm estimate``: per-GPU memory for each ZeRO stage (with/without CPU offload) and a tokens/s
estimate from a stated MFU, for a model config on a cluster layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from physfm.cli.args import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="memory per GPU per ZeRO stage and tokens/s for a model config on N nodes",
        description="Per-GPU memory (params, grads, optimizer states, activations with/without checkpointing) "
        "for DeepSpeed ZeRO-1/2/3 with and without CPU offload, and tokens/s at a stated MFU. "
        "Model-state figures agree with DeepSpeed's own estimators.",
    )
    parser.add_argument(
        "--config",
        required=True,
        type=Path,
        help="model YAML (configs/model/*.yaml), or a YAML with a 'model:' section",
    )
    parser.add_argument("--nodes", type=positive_int, default=1, help="machines")
    parser.add_argument(
        "--gpus-per-node", type=positive_int, default=8, help="GPUs on each machine"
    )
    parser.add_argument(
        "--seq-len",
        type=positive_int,
        default=None,
        help="tokens per sample (default: the config's window, conditioning + max_frames frames)",
    )
    parser.add_argument(
        "--micro-batch", type=positive_int, default=1, help="samples per GPU per step"
    )
    parser.add_argument(
        "--predicted-frames",
        type=positive_int,
        default=None,
        help="frames that carry the loss (sets the logits' size; default: all)",
    )
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="model-FLOPs utilisation to assume (0-1)"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="peak bf16 dense TFLOP/s per GPU (H100 SXM: 989)",
    )
    parser.add_argument(
        "--gpu-mem-gib", type=float, default=80.0, help="GPU memory for the 'fits' column"
    )
    parser.add_argument(
        "--device",
        choices=("gpu", "cpu"),
        default="gpu",
        help="gpu: bf16 mixed precision, per GPU; cpu: training on CPUs, per rank (process), host memory "
        "included (--gpus-per-node = ranks per node; --gpu-mem-gib = memory per rank)",
    )
    parser.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="with --device cpu: params and grads in fp32 (precision 32-true, the CPU default) or bf16 "
        "(precision bf16-mixed)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="model config overrides")
    parser.set_defaults(func=run)


def load_model_config(path: Path, overrides: list[str] | None = None):
    """Model YAML (or a YAML with a ``model:`` mapping) + overrides -> validated ``ModelConfig``."""
    from data_pipelines.config import ConfigError, from_dict, merge, parse_overrides, read_yaml
    from physfm.models.trunk import ModelConfig

    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if isinstance(data.get("model"), dict):
        data = data["model"]
    try:
        return from_dict(ModelConfig, merge(data, parse_overrides(overrides)), "model")
    except ConfigError as err:  # names the key; add the file
        raise ConfigError(f"{path}: {err}") from None


def run(args: argparse.Namespace) -> int:
    from physfm.train.estimate import estimate, format_table

    cfg = load_model_config(args.config, args.overrides)
    est = estimate(
        cfg,
        args.nodes,
        args.gpus_per_node,
        seq_len=args.seq_len,
        micro_batch=args.micro_batch,
        predicted_frames=args.predicted_frames,
        mfu=args.mfu,
        peak_tflops=args.peak_tflops,
        device=args.device,
        dtype=args.dtype,
    )
    if args.json:
        print(json.dumps(dict(est.to_dict(), config=str(args.config))))
    else:
        print(format_table(est, name=args.config.stem, gpu_mem_gib=args.gpu_mem_gib))
    return 0

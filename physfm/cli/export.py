"""``physfm export --ckpt CKPT --out DIR`` — safetensors + config, ZeRO shards consolidated."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="consolidate a checkpoint (any strategy) into safetensors + config"
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="checkpoint file, DeepSpeed checkpoint dir, or run dir (newest)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder to write model.safetensors + config.json into; every --ckpt and "
        "PhysicsModel.from_pretrained read it",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm.inference.loading import export_model

    out = export_model(args.ckpt, args.out)
    print(f"exported {args.ckpt} → {out}/model.safetensors + config.json")
    return 0

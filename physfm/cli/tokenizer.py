"""``physfm tokenizer train|eval|encode|decode`` — train the discrete physics tokenizer, measure it,
and turn field shards into token shards and back. A thin layer over the ``tokenizer`` package."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from physfm.cli.args import add_split_argument, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenizer", help="train, evaluate and apply the discrete physics tokenizer"
    )
    verbs = parser.add_subparsers(dest="tokenizer_verb", metavar="ACTION")
    verbs.required = True
    _add_train_parser(verbs)
    _add_eval_parser(verbs)
    _add_encode_parser(verbs)
    _add_decode_parser(verbs)


def _add_train_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "train", help="train a tokenizer from a YAML config (+ dotted key=value overrides)"
    )
    p.add_argument(
        "--config", required=True, metavar="YAML", help="e.g. configs/tokenizer/tiny.yaml"
    )
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory (same as out=...)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="e.g. data.shards=SHARDS trainer.max_steps=20",
    )
    p.set_defaults(func=run_train)


def _add_eval_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "eval", help="per-field VRMSE/PSNR, code usage, perplexity, reconstruction PNGs"
    )
    p.add_argument(
        "--ckpt", required=True, metavar="CKPT", help="checkpoint or training run directory"
    )
    p.add_argument(
        "--data", required=True, metavar="SHARDS", help="field shards (physfm data shard --out)"
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="metrics.json, report.md, PNGs (default: runs/tokenizer-eval-<time>)",
    )
    add_split_argument(p, "valid", single=True)
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass")
    p.add_argument(
        "--max-batches",
        type=positive_int,
        default=None,
        help="score at most this many batches of each dataset",
    )
    p.set_defaults(func=run_eval)


def _add_encode_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "encode", help="field shards → token shards (with the tokenizer's fingerprint)"
    )
    p.add_argument(
        "--ckpt",
        required=True,
        metavar="CKPT",
        help="tokenizer checkpoint or training run directory",
    )
    p.add_argument(
        "--data", required=True, metavar="SHARDS", help="field shards (physfm data shard --out)"
    )
    p.add_argument("--out", required=True, metavar="TOKENS", help="token shard folder to write")
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass")
    p.add_argument(
        "--n-input",
        type=positive_int,
        default=None,
        help="window context frames (default: the shards')",
    )
    p.add_argument(
        "--n-output",
        type=positive_int,
        default=None,
        help="window target frames (default: the shards')",
    )
    p.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="steps between window starts (default: the shards')",
    )
    add_split_argument(p, None)
    p.set_defaults(func=run_encode)


def _add_decode_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("decode", help="token shards → field shards in physical units")
    p.add_argument(
        "--ckpt", required=True, metavar="CKPT", help="the tokenizer that encoded the tokens"
    )
    p.add_argument(
        "--tokens",
        required=True,
        metavar="TOKENS",
        help="token shards (physfm tokenizer encode --out)",
    )
    p.add_argument("--out", required=True, metavar="SHARDS", help="field shard folder to write")
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass")
    add_split_argument(p, None)
    p.set_defaults(func=run_decode)


def run_train(args: argparse.Namespace) -> int:
    from data_pipelines.config import load_config
    from tokenizer.training import TokenizerTrainConfig, train_tokenizer

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    cfg = load_config(TokenizerTrainConfig, args.config, overrides)
    path = train_tokenizer(cfg)
    print(f"tokenizer checkpoint: {path}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from tokenizer.evaluate import evaluate_tokenizer

    out = args.out or f"runs/tokenizer-eval-{datetime.now():%Y%m%d-%H%M%S}"
    metrics = evaluate_tokenizer(
        args.ckpt,
        args.data,
        out,
        split=args.split[0],
        batch_size=args.batch_size,
        max_batches=args.max_batches,
    )
    print(json.dumps(metrics["overall"], indent=1))
    print(f"wrote {out}/metrics.json and {out}/report.md")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from data_pipelines.manifest import Manifest
    from tokenizer.encode import encode_shards

    window = None
    if (args.n_input, args.n_output, args.stride) != (None, None, None):
        manifest = Manifest.load(args.data)
        window = manifest.resolve_window(
            n_input=args.n_input, n_output=args.n_output, stride=args.stride
        )
    path = encode_shards(
        args.ckpt, args.data, args.out, batch_size=args.batch_size, splits=args.split, window=window
    )
    print(f"token shards: {path}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from tokenizer.encode import decode_shards

    path = decode_shards(
        args.ckpt, args.tokens, args.out, batch_size=args.batch_size, splits=args.split
    )
    print(f"decoded shards: {path}")
    return 0

"""Discrete physics tokenizer: FSQ quantiser, causal spatiotemporal conv encoder/decoder with
per-dataset heads, training, metrics, evaluation and token-shard encode/decode.

Example::

    from tokenizer import load_tokenizer
    tok = load_tokenizer("runs/tokenizer/checkpoint")
    z = tok.normalize(window, "gray_scott")            # window: [B, T, C, *space], physical units
    ids = tok.encode(z, "gray_scott")                  # [B, T', *space'] int64
    recon = tok.denormalize(tok.decode(ids, "gray_scott", n_frames=window.shape[1]), "gray_scott")

Names are imported lazily so ``import tokenizer`` does not pull in Lightning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FSQ": "tokenizer.fsq",
    "Tokenizer": "tokenizer.model",
    "TokenizerConfig": "tokenizer.model",
    "DatasetSpec": "tokenizer.model",
    "vrmse": "tokenizer.metrics",
    "psnr": "tokenizer.metrics",
    "mse": "tokenizer.metrics",
    "code_counts": "tokenizer.metrics",
    "code_usage": "tokenizer.metrics",
    "perplexity": "tokenizer.metrics",
    "CodeStats": "tokenizer.metrics",
    "save_tokenizer": "tokenizer.checkpoint",
    "load_tokenizer": "tokenizer.checkpoint",
    "fingerprint": "tokenizer.checkpoint",
    "TokenizerTrainConfig": "tokenizer.training",
    "TokenizerModule": "tokenizer.training",
    "train_tokenizer": "tokenizer.training",
    "evaluate_tokenizer": "tokenizer.evaluate",
    "pool_baseline": "tokenizer.evaluate",
    "encode_shards": "tokenizer.encode",
    "decode_shards": "tokenizer.encode",
    "check_token_manifest": "tokenizer.encode",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

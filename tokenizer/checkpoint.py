"""Tokenizer checkpoints: ``tokenizer.safetensors`` (weights) + ``tokenizer.json`` (architecture,
datasets).

A checkpoint is a directory; it is written whole into a hidden sibling and swapped in with renames,
so a reader never sees weights from one save beside a config from another. Loading reads safetensors
and JSON only — nothing is unpickled. The *fingerprint* is the sha256 of the weights file and the
canonical JSON of everything that determines the tokens (architecture, datasets, normalisation
stats); token shards record it, and decoding them with any other tokenizer is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from data_pipelines.atomic import atomic_dir
from data_pipelines.errors import DataError
from tokenizer.model import DatasetSpec, Tokenizer, TokenizerConfig

WEIGHTS = "tokenizer.safetensors"
CONFIG = "tokenizer.json"
FORMAT = "physfm-tokenizer"
VERSION = 1


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint directory at ``path`` (itself, or a training run's ``checkpoint/``), or
    None."""
    path = Path(path)
    for candidate in (path, path / "checkpoint"):
        if (candidate / CONFIG).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a training run directory (which holds ``checkpoint/``)."""
    found = find_checkpoint(path)
    if found is not None:
        return found
    raise DataError(
        f"{path}: not a tokenizer checkpoint (expected {CONFIG} and {WEIGHTS} in it or in {path}/checkpoint)"
    )


def _identity(model: Tokenizer) -> dict[str, Any]:
    """Everything besides the weights that decides which tokens a field becomes."""
    model_cfg = dataclasses.asdict(model.cfg)
    if not model_cfg["conditional"]:
        # Plain tokenizers keep the identity (hence fingerprint) they had before the key existed.
        del model_cfg["conditional"]
    if not model_cfg["skip_coding"]:
        # Likewise for tokenizers without skip decisions (the default).
        del model_cfg["skip_coding"]
    return {
        "model": model_cfg,
        "datasets": {name: dataclasses.asdict(spec) for name, spec in model.datasets.items()},
    }


def _fingerprint(weights: bytes, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(weights)
    digest.update(json.dumps(identity, sort_keys=True).encode())
    return digest.hexdigest()


def save_tokenizer(
    model: Tokenizer, out_dir: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``out_dir/{tokenizer.safetensors, tokenizer.json}`` atomically; returns ``out_dir``."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save(state)
    identity = _identity(model)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **identity,
        "fingerprint": _fingerprint(weights, identity),
        **({"train": extra} if extra else {}),
    }
    with atomic_dir(out_dir) as staging:
        (staging / WEIGHTS).write_bytes(weights)
        (staging / CONFIG).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return out_dir


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    ckpt = resolve_checkpoint(path)
    try:
        meta = json.loads((ckpt / CONFIG).read_text())
    except ValueError as err:
        raise DataError(f"{ckpt / CONFIG}: unreadable tokenizer config: {err}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{ckpt / CONFIG}: not a physfm tokenizer config (format != {FORMAT!r})")
    return meta


def read_tokenizer_spec(path: str | Path) -> tuple[TokenizerConfig, dict[str, DatasetSpec]]:
    """A checkpoint's config and datasets, read without its weights."""
    meta = read_checkpoint_meta(path)
    fields = {f.name for f in dataclasses.fields(TokenizerConfig)}
    cfg = TokenizerConfig(**{k: v for k, v in meta["model"].items() if k in fields})
    return cfg, {name: DatasetSpec(**spec) for name, spec in meta["datasets"].items()}


def load_tokenizer(path: str | Path, map_location: str | torch.device = "cpu") -> Tokenizer:
    """Rebuild a :class:`Tokenizer` from a checkpoint (or run) directory; weights via safetensors
    only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt = resolve_checkpoint(path)
    cfg, datasets = read_tokenizer_spec(ckpt)
    model = Tokenizer(cfg, datasets)
    try:
        state = load_file(str(ckpt / WEIGHTS), device=str(map_location))
        model.load_state_dict(state, strict=True)
    # not a safetensors file (a pickle, say): refused, never unpickled
    except SafetensorError as err:
        raise DataError(
            f"{ckpt / WEIGHTS}: not a valid safetensors file, refused ({err})"
        ) from None
    except (RuntimeError, OSError) as err:  # missing/unexpected keys, unreadable file
        first = str(err).strip().splitlines()[0]
        raise DataError(f"{ckpt / WEIGHTS}: weights do not match {CONFIG}: {first}") from None
    model.eval()
    return model


def fingerprint(path_or_model: str | Path | Tokenizer) -> str:
    """sha256 of weights + identity config, from a checkpoint directory or an in-memory model."""
    if isinstance(path_or_model, Tokenizer):
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in path_or_model.state_dict().items()}
        return _fingerprint(save(state), _identity(path_or_model))
    ckpt = resolve_checkpoint(path_or_model)
    meta = read_checkpoint_meta(ckpt)
    return _fingerprint(
        (ckpt / WEIGHTS).read_bytes(), {"model": meta["model"], "datasets": meta["datasets"]}
    )

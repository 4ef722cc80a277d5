"""The tiny transformer the model-level tests share, and the export directory it is written to.

Two layers of width 32 over a 4x4 token grid of a 16-code vocabulary: large enough for every code
path (grouped-query attention, two blocks to hook, conditioning tokens), small enough to build in
milliseconds.  Tests that need another size pass overrides instead of writing a config out again.
The ``tiny_model`` fixture in tests/conftest.py is the default model, seeded and in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from physfm.core.checkpoint import export_safetensors
from physfm.core.run_info import RunInfo
from physfm.models.ar import PhysicsTransformer
from physfm.models.trunk import ModelConfig

TINY_MODEL: dict[str, Any] = dict(
    vocab_size=16,
    n_layer=2,
    n_head=2,
    n_kv_head=1,
    d_model=32,
    ffn_hidden=64,
    max_frames=3,
    grid_shape=[4, 4],
    n_spatial_dims=2,
    n_datasets=2,
)


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """The tiny model's config with ``overrides`` (any ModelConfig field) applied."""
    return ModelConfig(**{**TINY_MODEL, **overrides})


def tiny_ar_model(seed: int = 0, **overrides: Any) -> PhysicsTransformer:
    """A randomly initialised tiny AR transformer (weights fixed by ``seed``), in eval mode."""
    torch.manual_seed(seed)
    return PhysicsTransformer(tiny_model_config(**overrides)).eval()


def export_ar_model(
    model: PhysicsTransformer,
    out: Path,
    *,
    dataset_names: list[str],
    n_context_frames: int,
    tokenizer: Path | None = None,
    tokenizer_fingerprint: str = "",
) -> Path:
    """An export directory of ``model`` that ``load_ar_model`` reads; the fingerprint is the
    tokenizer's own unless given (token-shard-only tests name a made-up one)."""
    from tokenizer.checkpoint import fingerprint

    info = RunInfo(
        kind="ar",
        model=model.config,
        dataset_names=dataset_names,
        n_context_frames=n_context_frames,
        n_frames=model.config.max_frames,
        tokenizer=str(tokenizer) if tokenizer is not None else "",
        tokenizer_fingerprint=tokenizer_fingerprint or fingerprint(tokenizer),
    )
    return export_safetensors(model.state_dict(), info.to_dict(), out)

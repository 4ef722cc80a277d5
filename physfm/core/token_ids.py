"""The one check that token ids fit a model's vocabulary, before they reach its embedding table.

An id outside the table fails deep inside ``nn.Embedding`` (an ``IndexError`` traceback on CPU, a
device assert on GPU); checked here, the user learns which token set and which model disagree.
Token sets made by a tokenizer record its codebook in their manifest (checked when the set is
opened); hand-made or damaged shards are caught per batch, on the host, before the batch moves to
the accelerator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_pipelines.errors import DataError
from data_pipelines.manifest import Manifest


def largest_token_id(manifest: Manifest | dict[str, Any]) -> int | None:
    """The largest id a token set's tokenizer emits (its codebook, plus the "no change" id of a
    conditional tokenizer), or None where the manifest does not say."""
    tokenizer = Manifest.coerce(manifest).tokenizer
    return tokenizer.largest_id if tokenizer is not None else None


def check_manifest_vocab(
    manifest: Manifest | dict[str, Any], location: str | Path, vocab_size: int, key: str
) -> None:
    """Refuse a token set whose tokenizer emits ids the model (``vocab_size``, set by ``key``)
    cannot embed."""
    largest = largest_token_id(manifest)
    if largest is not None and largest >= vocab_size:
        raise DataError(
            f"{location}: token ids go up to {largest} (a {largest + 1}-id tokenizer), beyond the model's "
            f"vocabulary of {vocab_size} ({key}); pretrain with {key}={largest + 1} or more, or encode with "
            "the model's tokenizer"
        )


def check_token_ids(tokens: torch.Tensor, vocab_size: int, where: str) -> None:
    """Refuse a batch holding an id outside ``[0, vocab_size)``; ``where`` names the data."""
    if tokens.numel() == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise DataError(
            f"{where}: token id {bad} is outside the model's vocabulary [0, {vocab_size}); the shards were "
            "made by another tokenizer than the model's, or are damaged"
        )

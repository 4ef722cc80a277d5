"""Token shards: encode a field shard set into integer tokens, and decode tokens back into fields.

Token shards keep the field shards' layout (README, Data): ``TOKENS/{split}/shard-NNNNNN.tar`` with,
per window, ``KEY.tokens.npy`` (int32 ids ``[T', *space']`` for the input *and* output frames, in
time order) and ``KEY.meta.json`` (the source window's meta plus ``n_frames``), and
``TOKENS/manifest.json`` with the source manifest's datasets (each with its ``token_grid``),
``tokenizer_fingerprint``, a ``tokenizer`` record and the ``token_layout`` the tokenizer works out
(:class:`data_pipelines.manifest.Manifest`). With ``temporal_compression == 1`` the first
``n_input`` token frames are the input frames. A conditional tokenizer (the tokenizer record's
``conditional``; absent in older manifests = false) writes windows whose frame 0 is key-coded and
whose frame t > 0 is coded given the true frame t - 1 (or, ``closed_loop=True``, the decoded frame t
- 1); decoding is closed loop (each decoded frame conditions the next), so open-loop tokens drift
when a whole window is re-decoded and closed-loop ones do not.

Both directions stream: windows are read in order, batched per dataset (``batch_size``), and written
to size-bounded shards, so memory stays bounded whatever the shard set's size. Decoding, or any use
of token shards with a tokenizer, first checks the fingerprint and refuses a mismatch.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.clips import WindowSpec
from data_pipelines.errors import DataError
from data_pipelines.manifest import DECODED, TOKENS, WINDOWS, Manifest, SplitEntry, TokenizerRecord
from tokenizer.model import Tokenizer


def check_token_manifest(
    manifest: Manifest | dict[str, Any], tokens_dir: str | Path, ckpt: str | Path | Tokenizer
) -> None:
    """Raise :class:`DataError` unless ``manifest`` (of ``tokens_dir``) was written by this
    tokenizer."""
    from tokenizer.checkpoint import fingerprint

    manifest = Manifest.coerce(manifest, str(tokens_dir))
    if not manifest.is_tokens:
        raise DataError(
            f"{tokens_dir}: not a token shard set (its manifest has no tokenizer_fingerprint)"
        )
    recorded, actual = str(manifest.fingerprint), fingerprint(ckpt)
    if recorded != actual:
        where = "the given tokenizer" if isinstance(ckpt, Tokenizer) else f"tokenizer {ckpt}"
        raise DataError(
            f"{tokens_dir}: tokens were encoded by tokenizer {recorded[:12]}, but {where} is {actual[:12]}; "
            "decode with the tokenizer that encoded them (or re-encode with `physfm tokenizer encode`)"
        )


def _batches(
    samples: Iterator[dict[str, Any]], batch_size: int
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Consecutive samples grouped into batches of one dataset each (order kept)."""
    batch: list[dict[str, Any]] = []
    for sample in samples:
        name = sample["meta"]["dataset"]
        if batch and (name != batch[0]["meta"]["dataset"] or len(batch) == batch_size):
            yield batch[0]["meta"]["dataset"], batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch[0]["meta"]["dataset"], batch


def check_datasets(tok: Tokenizer, manifest: Manifest | dict[str, Any], where: str | Path) -> None:
    """Refuse a shard set whose datasets the tokenizer does not know, or knows with other channels
    or another number of spatial dimensions (a 3D dataset under a 2D one's name fails deep inside a
    convolution)."""
    manifest = Manifest.coerce(manifest, str(where))
    for name, entry in manifest.datasets.items():
        if name not in tok.datasets:
            raise DataError(
                f"{where}: dataset {name!r} is unknown to the tokenizer (knows: {', '.join(sorted(tok.datasets))})"
            )
        if entry.channel_names != tok.datasets[name].channel_names:
            raise DataError(
                f"{where}: dataset {name!r} has channels {entry.channel_names}, the tokenizer "
                f"expects {tok.datasets[name].channel_names}"
            )
        shape = entry.spatial_shape
        if shape is not None and len(shape) != tok.cfg.n_spatial_dims:
            raise DataError(
                f"{where}: dataset {name!r} is {len(shape)}D (grid {list(shape)}), the tokenizer codes "
                f"{tok.cfg.n_spatial_dims}D fields; shard it under another name, or train a tokenizer for it"
            )


def _split_names(manifest: Manifest, splits: list[str] | None) -> list[str]:
    have = list(manifest.splits)
    for split in splits or []:
        if split not in have:
            raise DataError(f"no {split!r} split in the manifest (have: {', '.join(have)})")
    return splits or have


@torch.no_grad()
def encode_shards(
    ckpt: str | Path,
    shards_dir: str | Path,
    out_dir: str | Path,
    batch_size: int = 16,
    splits: list[str] | None = None,
    max_shard_bytes: int = 256 << 20,
    closed_loop: bool = False,
    window: WindowSpec | None = None,
) -> Path:
    """Field shards → token shards (streaming, batched). Returns ``out_dir``.

    ``window``: the windows to encode, cut from clip field shards (default: the field shards'
    window). Token shards hold whole windows: a causal tokenizer codes a frame given the frames
    before it in its window, so tokens cut from longer token clips would differ from the tokens of
    that window.

    ``closed_loop`` (conditional tokenizers): code frame t given the decoded frame t - 1 rather than
    the true one (see :meth:`Tokenizer.encode`); recorded in the token manifest's tokenizer record.
    """
    from tokenizer.checkpoint import load_tokenizer

    tok = load_tokenizer(ckpt)
    if closed_loop and not tok.cfg.conditional:
        raise DataError(
            f"{ckpt}: closed-loop encoding needs a conditional tokenizer (model.conditional)"
        )
    manifest = Manifest.load(shards_dir)
    if manifest.is_tokens:
        raise DataError(f"{shards_dir}: already a token shard set; encode the field shards instead")
    check_datasets(tok, manifest, shards_dir)
    out_dir = Path(out_dir)
    spec = manifest.resolve_window(window)
    names = _split_names(manifest, splits)
    # A refused or failed encode leaves nothing it created behind (no empty split folder that looks
    # like an encoded split); what was there before is left alone.
    created = [p for p in (out_dir, *(out_dir / s for s in names)) if not p.exists()]
    try:
        split_records = {
            split: _encode_split(
                tok, shards_dir, split, spec, out_dir, batch_size, max_shard_bytes, closed_loop
            )
            for split in names
        }
    except BaseException:
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)
        raise
    token_manifest(tok, ckpt, manifest, spec, split_records, shards_dir, closed_loop).write(out_dir)
    return out_dir


def _encode_split(
    tok: Tokenizer,
    shards_dir: str | Path,
    split: str,
    spec: WindowSpec,
    out_dir: Path,
    batch_size: int,
    max_shard_bytes: int,
    closed_loop: bool,
) -> SplitEntry:
    """Encode one split's windows into ``out_dir/split``; its manifest entry."""
    from data_pipelines.shards import ShardWriter, iter_samples

    n_frames = spec.length
    with ShardWriter(out_dir / split, max_shard_bytes=max_shard_bytes) as writer:
        for name, batch in _batches(iter_samples(shards_dir, split, spec), batch_size):
            window = np.stack([np.concatenate([s["input"], s["output"]], axis=0) for s in batch])
            if window.shape[1] != n_frames:
                raise DataError(
                    f"{batch[0]['__url__']}: window {batch[0]['__key__']} has {window.shape[1]} "
                    f"frames, the manifest says {n_frames}"
                )
            z = tok.normalize(torch.from_numpy(window).float(), name)
            ids = (
                tok.encode(z, name, closed_loop=True) if closed_loop else tok.encode(z, name)
            ).numpy()
            ids = ids.astype(np.int32)  # [B, T', *space']
            for sample, tokens in zip(batch, ids):
                meta = {**sample["meta"], "n_frames": n_frames}
                writer.write(
                    sample["__key__"], {"tokens.npy": tokens, "meta.json": meta}, dataset=name
                )
    return _split_entry(split, writer.records)


def _split_entry(split: str, records: list[dict[str, Any]]) -> SplitEntry:
    shards = [{**r, "path": f"{split}/{r['path']}"} for r in records]
    return SplitEntry(shards, sum(r["n_samples"] for r in records))


def token_manifest(
    tok: Tokenizer,
    ckpt: str | Path,
    fields: Manifest,
    spec: WindowSpec,
    splits: dict[str, SplitEntry],
    shards_dir: str | Path,
    closed_loop: bool,
) -> Manifest:
    """The manifest of token shards encoded by ``tok`` from the field shards ``fields``: their
    datasets with each one's token grid, the tokenizer record, and the token layout the tokenizer
    works out."""
    from tokenizer.checkpoint import fingerprint

    datasets = {
        name: dataclasses.replace(
            entry, token_grid=tok.token_grid(spec.length, tuple(entry.spatial_shape or ()))
        )
        for name, entry in fields.datasets.items()
    }
    conditional = tok.cfg.conditional
    record = TokenizerRecord(
        fingerprint=fingerprint(ckpt),
        checkpoint=str(ckpt),
        levels=tuple(tok.cfg.levels),
        codebook_size=tok.fsq.codebook_size,
        spatial_compression=tok.cfg.spatial_compression,
        temporal_compression=tok.cfg.temporal_compression,
        conditional=conditional,
        no_change_id=tok.no_change_id if conditional else None,
        closed_loop=closed_loop if conditional else None,
    )
    return Manifest(
        kind=TOKENS,
        layout=WINDOWS,
        window=spec,
        datasets=datasets,
        splits=splits,
        # the field shards' mixing weights (a corpus's) carry over to the model trained on the
        # tokens
        dataset_weights=fields.dataset_weights,
        tokenizer=record,
        token_layout=tok.token_layout(
            spec, [e.spatial_shape or () for e in fields.datasets.values()]
        ),
        extra={"source_shards": str(shards_dir)},
    )


def read_token_shards(
    tokens_dir: str | Path, ckpt: str | Path | Tokenizer, split: str
) -> Iterator[dict[str, Any]]:
    """Decoded token samples ``{"__key__", "tokens", "meta"}`` of a split, after the fingerprint
    check."""
    from data_pipelines.shards import iter_samples

    check_token_manifest(Manifest.load(tokens_dir), tokens_dir, ckpt)
    yield from iter_samples(tokens_dir, split)


@torch.no_grad()
def decode_shards(
    ckpt: str | Path,
    tokens_dir: str | Path,
    out_dir: str | Path,
    batch_size: int = 16,
    splits: list[str] | None = None,
    max_shard_bytes: int = 256 << 20,
) -> Path:
    """Token shards → field shards in physical units (``input.npy``/``output.npy``), loadable as
    shards."""
    from data_pipelines.shards import ShardWriter, iter_samples
    from tokenizer.checkpoint import load_tokenizer

    manifest = Manifest.load(tokens_dir)
    check_token_manifest(manifest, tokens_dir, ckpt)
    tok = load_tokenizer(ckpt)
    check_datasets(tok, manifest, tokens_dir)
    n_input, n_frames = manifest.window.n_input, manifest.window.length
    out_dir = Path(out_dir)
    split_records: dict[str, SplitEntry] = {}
    for split in _split_names(manifest, splits):
        with ShardWriter(out_dir / split, max_shard_bytes=max_shard_bytes) as writer:
            for name, batch in _batches(iter_samples(tokens_dir, split), batch_size):
                ids = torch.from_numpy(np.stack([s["tokens"] for s in batch]).astype(np.int64))
                try:
                    fields = tok.denormalize(tok.decode(ids, name, n_frames=n_frames), name).numpy()
                except ValueError as err:  # ids out of the codebook's range
                    raise DataError(f"{batch[0]['__url__']}: {err}") from None
                for sample, window in zip(batch, fields.astype(np.float32)):
                    meta = {k: v for k, v in sample["meta"].items() if k != "n_frames"}
                    writer.write(
                        sample["__key__"],
                        {
                            "input.npy": window[:n_input],
                            "output.npy": window[n_input:],
                            "meta.json": meta,
                        },
                        dataset=name,
                    )
        split_records[split] = _split_entry(split, writer.records)
    Manifest(
        kind=DECODED,
        layout=WINDOWS,
        window=manifest.window,
        datasets={
            name: dataclasses.replace(e, token_grid=None) for name, e in manifest.datasets.items()
        },
        splits=split_records,
        extra={"decoded_from": str(tokens_dir), "decoded_by": manifest.fingerprint},
    ).write(out_dir)
    return out_dir

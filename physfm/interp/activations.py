"""Capture a model's activations over a shard selection, pooled per window, streamed to disk.

    from physfm.interp.activations import capture_to_disk, ActivationStore
    store = capture_to_disk(model, info, "runs/tokens", "acts/", points=["embedding", "blocks.1.resid"],
                            split="test", selection="nu<0.003", pool="mean")
    X = store.load("blocks.1.resid")            # [N, d]; store.meta() holds each window's params

A window's tokens ``[F, *grid]`` run through the model once (teacher-forced, as in training); at
each hook point (``physfm.interp.hooks``) the frame tokens' outputs ``[F, *grid, d]`` are pooled
inside the hook, so only pooled tensors leave the forward pass:

* ``mean``            → [d]          mean over every token of every frame;
* ``frames``          → [F, d]       mean over each frame's tokens;
* ``spatial``         → [*grid, d]   mean over frames, the spatial map kept;
* ``zscore_spatial``  → [*grid, d]   each frame z-scored over (space, channels), then the mean over
  frames
                                     (the steering reference method's per-sample normalisation).

Samples are written ``chunk_size`` at a time to ``chunk-NNNNNN.safetensors`` (one tensor per hook
point, the windows' meta as JSON in the file's metadata) and ``index.json`` last, so memory holds at
most one chunk plus one batch whatever the selection's size. ``--data`` may be token shards (checked
against the model's tokenizer fingerprint) or field shards (encoded on the fly with the model's
tokenizer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from data_pipelines.atomic import atomic_path, atomic_write_text
from data_pipelines.errors import DataError, InputError
from data_pipelines.manifest import Manifest
from data_pipelines.shards import iter_samples
from physfm.core.token_ids import check_manifest_vocab, check_token_ids
from physfm.eval.windows import evenly_spaced
from physfm.inference import PhysicsModel
from physfm.interp.hooks import capture, hook_points
from physfm.interp.selection import Selection, parse_selection
from physfm.models.refiner import state_sha256
from tokenizer.encode import check_datasets

Pool = Literal["mean", "frames", "spatial", "zscore_spatial"]
POOLS = ("mean", "frames", "spatial", "zscore_spatial")
INDEX = "index.json"
FORMAT = "physfm-activations"


@dataclass
class WindowBatch:
    dataset: str
    tokens: Tensor  # [B, F, *grid] long
    meta: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# windows
def _split_list(split: str | list[str]) -> list[str]:
    return [s for s in split.split(",") if s] if isinstance(split, str) else list(split)


def _field_encoder(
    info: dict[str, Any], manifest: Manifest, data: str | Path
) -> Callable[[Tensor, str], Tensor]:
    """Physical-unit windows [B, T, C, *space] of ``data`` → tokens, with the tokenizer the model
    was trained on (which must know ``data``'s datasets, their channels and dimensions)."""
    location = info.get("location")
    if not location:
        raise DataError(
            "field shards need the model's tokenizer to become tokens; pass token shards "
            "(physfm tokenizer encode) or load the model with physfm.inference.physics_model.PhysicsModel"
        )
    pm = PhysicsModel.from_pretrained(location, refiner=None)
    check_datasets(pm.tokenizer, manifest, data)
    return lambda frames, dataset: pm.encode(frames, dataset).cpu()


def iter_windows(
    data: str | Path,
    split: str | list[str] = "test",
    *,
    selection: str | Selection | None = None,
    max_windows: int | None = None,
    batch_size: int = 16,
    tokenizer_fingerprint: str | None = None,
    encoder: Callable[[Tensor, str], Tensor] | None = None,
) -> Iterator[WindowBatch]:
    """Token windows of ``data``'s split(s) that match ``selection``, in batches of one dataset
    each.

    ``max_windows`` keeps that many matching windows spread evenly over all of them (a first pass
    over the split counts them), not the first N — those would all come from one trajectory. Each
    meta gets ``split``. Token shards must carry ``tokenizer_fingerprint`` when one is given; field
    shards need ``encoder(frames [B, T, C, *space], dataset) -> tokens [B, F, *grid]``."""
    select = selection if isinstance(selection, Selection) else parse_selection(selection)
    manifest = Manifest.load(data)
    is_tokens = manifest.is_tokens
    _check_source(data, manifest, tokenizer_fingerprint, encoder)
    splits = _split_list(split)
    found, seen_names = 0, set()

    def matching() -> Iterator[tuple[int, dict[str, Any], dict[str, Any]]]:
        n = 0
        for s in splits:
            for sample in iter_samples(data, s):
                meta = {**sample["meta"], "split": s}
                seen_names.update(meta.get("params") or {}, meta)
                if select(meta):
                    yield n, sample, meta
                n += 1

    keep: set[int] | None = None
    if max_windows is not None:
        chosen = [i for i, _, _ in matching()]
        keep = {chosen[j] for j in evenly_spaced(len(chosen), max_windows)}
    batch: list[tuple[Any, dict[str, Any]]] = []

    def flush() -> WindowBatch:
        name = batch[0][1]["dataset"]
        if is_tokens:
            tokens = torch.from_numpy(np.stack([x for x, _ in batch]).astype(np.int64))
        else:
            frames = torch.from_numpy(np.stack([x for x, _ in batch])).float()
            tokens = encoder(frames, name).long()
        return WindowBatch(name, tokens, [m for _, m in batch])

    for i, sample, meta in matching():
        if keep is not None and i not in keep:
            continue
        x = (
            sample["tokens"]
            if is_tokens
            else np.concatenate([sample["input"], sample["output"]], axis=0)
        )
        if batch and (meta["dataset"] != batch[0][1]["dataset"] or len(batch) == batch_size):
            yield flush()
            batch = []
        batch.append((x, meta))
        found += 1
    if batch:
        yield flush()
    if found == 0:
        raise _no_match_error(data, select, seen_names, splits)


def _check_source(
    data: str | Path,
    manifest: Manifest,
    tokenizer_fingerprint: str | None,
    encoder: Callable[[Tensor, str], Tensor] | None,
) -> None:
    """Token shards must come from the model's tokenizer; field shards need an encoder."""
    if (
        manifest.is_tokens
        and tokenizer_fingerprint
        and manifest.fingerprint != tokenizer_fingerprint
    ):
        raise DataError(
            f"{data}: tokens were made by tokenizer {(manifest.fingerprint or '')[:12]}, the model "
            f"was trained on tokenizer {tokenizer_fingerprint[:12]}'s; encode the shards with its tokenizer"
        )
    if not manifest.is_tokens and encoder is None:
        raise DataError(
            f"{data}: field shards need an encoder (the model's tokenizer); pass token shards instead"
        )


def _no_match_error(
    data: str | Path, select: Selection, seen_names: set[str], splits: list[str]
) -> DataError:
    """Why no window matched: a name no window has (a typo, or an unquoted string), or none."""
    unknown = sorted(select.names - seen_names)
    if unknown:
        known = sorted(seen_names - {"params", "n_frames", "__key__"})
        return DataError(
            f"{data}: selection {str(select)!r}: no window has {', '.join(map(repr, unknown))} "
            f"(windows have: {', '.join(known)}; quote string values, e.g. dataset=='ns')"
        )
    return DataError(
        f"{data}: no window of split(s) {','.join(splits)} matches selection {str(select)!r}"
    )


# ---------------------------------------------------------------------------------------------
# pooling
def pool_frames(h: Tensor, n_frames: int, grid: tuple[int, ...], pool: Pool) -> Tensor:
    """Frame-token activations h [B, ≥F*T, d] (leading conditioning positions are dropped) →
    pooled."""
    T = math.prod(grid)
    h = h[:, h.shape[1] - n_frames * T :].float()
    h = h.reshape(h.shape[0], n_frames, *grid, h.shape[-1])  # [B, F, *grid, d]
    space = tuple(range(2, 2 + len(grid)))
    if pool == "mean":
        return h.mean(dim=(1, *space))
    if pool == "frames":
        return h.mean(dim=space)
    if pool == "spatial":
        return h.mean(dim=1)
    if pool == "zscore_spatial":
        dims = (*space, h.ndim - 1)  # each frame over (space, channels)
        z = (h - h.mean(dim=dims, keepdim=True)) / (h.std(dim=dims, keepdim=True) + 1e-6)
        return z.mean(dim=1)
    raise InputError(f"pool: expected one of {', '.join(POOLS)}, got {pool!r}")


@torch.no_grad()
def pooled_activations(
    model,
    tokens: Tensor,
    dataset_ids: Tensor,
    points: list[str],
    pool: Pool = "mean",
) -> dict[str, Tensor]:
    """One teacher-forced forward over windows tokens [B, F, *grid] → {point: pooled [B, ...]} (CPU,
    float32)."""
    if model.config.n_cond_tokens > 1:
        raise InputError(
            "activations: models conditioned on parameter tokens are not supported here "
            "(the parameter would be given to the model, not inferred)"
        )
    B, F, grid = tokens.shape[0], tokens.shape[1], tuple(tokens.shape[2:])
    device = next(model.parameters()).device
    with capture(model, points, transform=lambda h: pool_frames(h, F, grid, pool)) as store:
        if hasattr(
            model, "forward_window"
        ):  # the diffusion variant reads the window's codes (physfm/models/diffusion.py)
            model.forward_window(tokens.to(device), dataset_ids.to(device))
        else:
            model(tokens.reshape(B, -1).to(device), grid, dataset_ids.to(device))
    return {name: store[name][0] for name in points}


# --------------------------------------------------------------------------------------------- on
# disk
class ActivationWriter:
    """Buffers pooled activations and writes them ``chunk_size`` samples per safetensors file."""

    def __init__(
        self,
        out_dir: str | Path,
        points: list[str],
        chunk_size: int = 256,
        header: dict[str, Any] | None = None,
    ):
        if chunk_size < 1:
            raise InputError(f"chunk_size: must be >= 1, got {chunk_size}")
        self.out_dir, self.points, self.chunk_size = Path(out_dir), list(points), chunk_size
        self.header = dict(header or {})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob("chunk-*.safetensors"):  # a previous capture's leftovers
            stale.unlink()
        (self.out_dir / INDEX).unlink(missing_ok=True)
        self._buffer: dict[str, list[Tensor]] = {p: [] for p in self.points}
        self._meta: list[dict[str, Any]] = []
        self.chunks: list[dict[str, Any]] = []
        self.shapes: dict[str, list[int]] = {}
        self.peak_buffered = 0  # most samples held at once (≤ chunk_size - 1 + one batch)

    @property
    def n_buffered(self) -> int:
        return len(self._meta)

    def add(self, acts: dict[str, Tensor], meta: list[dict[str, Any]]) -> None:
        for p in self.points:
            if acts[p].shape[0] != len(meta):
                raise ValueError(
                    f"activations of {p}: {acts[p].shape[0]} samples for {len(meta)} metas"
                )
            self._buffer[p].append(acts[p].detach().cpu().float())
            self.shapes.setdefault(p, list(acts[p].shape[1:]))
        self._meta += meta
        self.peak_buffered = max(self.peak_buffered, self.n_buffered)
        while self.n_buffered >= self.chunk_size:
            self._write(self.chunk_size)

    def _write(self, n: int) -> None:
        from safetensors.torch import save

        tensors = {}
        for p in self.points:
            joined = torch.cat(self._buffer[p])
            tensors[p], rest = joined[:n].contiguous(), joined[n:]
            self._buffer[p] = [rest] if len(rest) else []
        meta, self._meta = self._meta[:n], self._meta[n:]
        path = self.out_dir / f"chunk-{len(self.chunks):06d}.safetensors"
        with atomic_path(path) as tmp:
            tmp.write_bytes(save(tensors, metadata={"meta": json.dumps(meta)}))
        self.chunks.append({"path": path.name, "n_samples": n})

    def close(self) -> dict[str, Any]:
        """Write the last partial chunk, then ``index.json`` (its presence marks a complete
        capture)."""
        if self.n_buffered:
            self._write(self.n_buffered)
        index = {
            "format": FORMAT,
            "version": 1,
            **self.header,
            "points": self.points,
            "shapes": self.shapes,
            "n_samples": sum(c["n_samples"] for c in self.chunks),
            "chunk_size": self.chunk_size,
            "peak_buffered_samples": self.peak_buffered,
            "chunks": self.chunks,
        }
        atomic_write_text(self.out_dir / INDEX, json.dumps(index, indent=1))
        return index


class ActivationStore:
    """Read a capture: per hook point, chunk by chunk (bounded memory) or all at once."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        path = self.dir / INDEX
        if not path.is_file():
            raise DataError(f"{self.dir}: no {INDEX}; not a (complete) activation capture")
        self.index = json.loads(path.read_text())
        if self.index.get("format") != FORMAT:
            raise DataError(f"{path}: not a physfm activation index")
        self.points: list[str] = self.index["points"]
        self.n_samples: int = self.index["n_samples"]
        self.pool: str = self.index.get("pool", "mean")

    def _check(self, point: str) -> None:
        if point not in self.points:
            raise DataError(
                f"{self.dir}: hook point {point!r} was not captured (have: {', '.join(self.points)})"
            )

    def iter_chunks(self, point: str) -> Iterator[tuple[Tensor, list[dict[str, Any]]]]:
        """(activations [n, ...], metas) per chunk file, reading only this point's tensor."""
        from safetensors import safe_open

        self._check(point)
        for chunk in self.index["chunks"]:
            with safe_open(str(self.dir / chunk["path"]), framework="pt") as f:
                yield f.get_tensor(point), json.loads(f.metadata()["meta"])

    def load(self, point: str) -> Tensor:
        return torch.cat([x for x, _ in self.iter_chunks(point)])

    def meta(self) -> list[dict[str, Any]]:
        from safetensors import safe_open

        metas: list[dict[str, Any]] = []
        for chunk in self.index["chunks"]:
            with safe_open(str(self.dir / chunk["path"]), framework="pt") as f:
                metas += json.loads(f.metadata()["meta"])
        return metas


def model_fingerprint(model) -> str:
    """sha256 of the transformer's weights: which exact model a capture or direction came from."""
    return state_sha256(model)


def code_histogram(tokens: Tensor, vocab_size: int) -> Tensor:
    """Fraction of each code in each window: tokens [B, F, *grid] → [B, vocab_size] (a probing
    baseline)."""
    flat = tokens.reshape(tokens.shape[0], -1).long()
    counts = torch.zeros(flat.shape[0], vocab_size).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float)
    )
    return counts / flat.shape[1]


# pseudo hook point: the window's code histogram, captured beside the layers
HISTOGRAM = "code_histogram"


def capture_windows(
    model,
    windows: Iterable[WindowBatch],
    points: list[str],
    out_dir: str | Path,
    *,
    dataset_names: list[str],
    pool: Pool = "mean",
    n_frames: int | None = None,
    chunk_size: int = 256,
    with_histogram: bool = False,
    header: dict[str, Any] | None = None,
) -> ActivationStore:
    """Stream ``windows`` through ``model`` and write pooled activations at ``points`` to
    ``out_dir``.

    ``n_frames`` keeps each window's first frames only (e.g. the context); None keeps all.
    ``with_histogram`` also stores each window's code histogram as the point ``code_histogram``."""
    if pool not in POOLS:
        raise InputError(f"pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    unknown = [p for p in points if p not in hook_points(model)]
    if unknown:
        raise InputError(
            f"hook point {unknown[0]!r} does not exist (have: embedding, blocks.{{0..."
            f"{len(model.blocks) - 1}}}.resid|attn_out|mlp_out)"
        )
    names = [*points, HISTOGRAM] if with_histogram else list(points)
    writer = ActivationWriter(out_dir, names, chunk_size, {"pool": pool, **(header or {})})
    for batch in windows:
        if batch.dataset not in dataset_names:
            raise DataError(
                f"dataset {batch.dataset!r} is unknown to the model (knows: {', '.join(dataset_names)})"
            )
        tokens = batch.tokens[:, :n_frames] if n_frames else batch.tokens
        check_token_ids(tokens, model.config.vocab_size, str((header or {}).get("data", "windows")))
        ids = torch.full((tokens.shape[0],), dataset_names.index(batch.dataset))
        acts = pooled_activations(model, tokens, ids, points, pool)
        if with_histogram:
            acts[HISTOGRAM] = code_histogram(tokens, model.config.vocab_size)
        writer.add(acts, batch.meta)
    writer.close()
    return ActivationStore(out_dir)


def capture_to_disk(
    model,
    info: dict[str, Any],
    data: str | Path,
    out_dir: str | Path,
    *,
    points: list[str],
    split: str | list[str] = "test",
    selection: str | None = None,
    pool: Pool = "mean",
    max_windows: int | None = None,
    batch_size: int = 16,
    chunk_size: int = 256,
    context_only: bool = False,
    with_histogram: bool = False,
) -> ActivationStore:
    """Select windows of ``data`` and capture them (see :func:`capture_windows`); ``info`` is the
    run info (``load_ar_model``'s): dataset names, tokenizer fingerprint, window layout."""
    encoder = None
    manifest = Manifest.load(data)
    if manifest.is_tokens:
        check_manifest_vocab(manifest, data, model.config.vocab_size, "the model's vocab_size")
    else:
        encoder = _field_encoder(info, manifest, data)
    windows = iter_windows(
        data,
        split,
        selection=selection,
        max_windows=max_windows,
        batch_size=batch_size,
        tokenizer_fingerprint=info.get("tokenizer_fingerprint"),
        encoder=encoder,
    )
    header = {
        "data": str(data),
        "split": split if isinstance(split, str) else ",".join(split),
        "selection": selection or "",
        "model_fingerprint": model_fingerprint(model),
        "context_only": context_only,
    }
    return capture_windows(
        model,
        windows,
        points,
        out_dir,
        dataset_names=list(info["dataset_names"]),
        pool=pool,
        n_frames=int(info["n_context_frames"]) if context_only else None,
        chunk_size=chunk_size,
        with_histogram=with_histogram,
        header=header,
    )

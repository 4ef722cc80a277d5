"""Streaming training loader over webdataset shards: rank/worker split, shuffling, mixing, resume.

Windows: clip shards (each frame stored once) are cut into windows here, in the workers, for any
``window`` (n_input, n_output, stride; default: the manifest's window); window shards (version 1,
token shards) are read as stored.  Epoch sizes and default mixing weights count the windows of the
chosen window, from the manifest's per-shard ``segments``.

Two modes:

* **sequential** (``resampled=False``, evaluation): each shard is read once; shards are dealt to
  ranks then workers (``shards[rank::world][worker::workers]``).  Ranks may get unequal batch
  counts.
* **resampled** (``resampled=True``, training): every (rank, worker) draws shards with replacement
  from its own seeded generator and yields exactly its share of ``batches_per_epoch`` — every rank
  gets the same number of batches per epoch, so DDP never hangs on a rank that ran out of data.

Heterogeneous datasets (different fields, channel counts, resolutions) are mixed *per batch*: a
batch holds windows of one dataset only (so it stacks into one tensor), and the dataset of each
batch is drawn with ``dataset_weights`` (default: the manifest's ``dataset_weights`` if it has them,
as a corpus does, else proportional to sample counts).  ``batch["dataset"]`` names it.

Determinism: the stream depends only on (seed, epoch, rank, worker).  Resume: ``skip_batches=k``
gives the same remaining stream as an uninterrupted run that has consumed k batches on this rank
(exact in resampled mode for any worker count, and in sequential mode with ``num_workers <= 1``);
batches are skipped before collation (decoding is a zero-copy view of the memory-mapped shard).  A
batch is assembled by one copy per window into a preallocated tensor, in shared memory when made in
a worker (so handing it to the main process copies nothing more); normalisation (per-channel z-score
from the manifest's stats) runs in place in the workers.  Corrupt or truncated shards raise
:class:`DataError` naming the shard and member; with ``on_error="skip"`` they are skipped, logged
and counted: ``batch["skipped_samples"]`` is this worker's running count (a truncated shard's unread
rest counts once, each undecodable sample once) and ``batch["skipped_new"]`` the part of it new
since the worker's previous batch (sums over workers and ranks).
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines.batch_memory import (
    BatchReceiver,
    SharedBatchPool,
    batch_tensor,
    new_release_flags,
)
from data_pipelines.clips import WindowSpec
from data_pipelines.errors import DataError, PhysfmError
from data_pipelines.manifest import CLIPS, Manifest
from data_pipelines.shards import clip_shard_windows, decode_sample, iter_raw_samples, shard_records

log = logging.getLogger(__name__)


class Normalizer:
    """Per-channel z-score of one dataset, from the manifest's stats; works on ``[..., C,
    *space]``."""

    def __init__(self, manifest: Manifest | dict[str, Any], dataset: str):
        entry = Manifest.coerce(manifest).dataset(dataset)
        if entry.spatial_shape is None or not {"mean", "std"} <= set(entry.stats):
            raise DataError(
                f"dataset {dataset!r}: the manifest gives no spatial_shape or no mean/std stats"
            )
        self.n_spatial_dims = len(entry.spatial_shape)
        self.mean = np.asarray(entry.stats["mean"], dtype=np.float32)
        std = np.asarray(entry.stats["std"], dtype=np.float32)
        self.std = np.where(std > 0, std, 1.0).astype(np.float32)  # constant channels: shift only

    def _shape(self, arr: np.ndarray | torch.Tensor) -> tuple[int, ...]:
        return (-1,) + (1,) * self.n_spatial_dims

    def normalize(self, x):
        mean, std = self._cast(x)
        return (x - mean) / std

    def denormalize(self, x):
        mean, std = self._cast(x)
        return x * std + mean

    def _cast(self, x):
        shape = self._shape(x)
        if isinstance(x, torch.Tensor):
            return (
                torch.as_tensor(self.mean, device=x.device, dtype=x.dtype).reshape(shape),
                torch.as_tensor(self.std, device=x.device, dtype=x.dtype).reshape(shape),
            )
        return self.mean.reshape(shape), self.std.reshape(shape)


def manifest_weights(manifests: list[Manifest], sizes: dict[str, int]) -> dict[str, float]:
    """Mixing weights when the caller gives none: the shard sets' own ``dataset_weights`` (a corpus
    sets equal shares) when they cover every dataset, else proportional to window counts."""
    suggested: dict[str, float] = {}
    for manifest in manifests:
        suggested.update(manifest.dataset_weights or {})
    if suggested and set(sizes) <= set(suggested):
        return {k: float(suggested[k]) for k in sizes}
    return {k: float(v) for k, v in sizes.items()}


def current_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class WindowStream(IterableDataset):
    """Iterable of ready-made batches (dicts); wrap in ``DataLoader(batch_size=None)``."""

    def __init__(
        self,
        shards: str | list[str],
        split: str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        normalize: bool = True,
        resampled: bool = False,
        batches_per_epoch: int | None = None,
        dataset_weights: dict[str, float] | None = None,
        shuffle_buffer: int = 256,
        skip_batches: int = 0,
        drop_last: bool = False,
        on_error: Literal["raise", "skip"] = "raise",
        rank: int | None = None,
        world_size: int | None = None,
        keys: tuple[str, ...] = ("input", "output"),
        window: WindowSpec | tuple[int, int, int] | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise DataError(f"batch_size must be ≥ 1, got {batch_size}")
        if resampled and not batches_per_epoch:
            raise DataError(
                "resampled loading needs batches_per_epoch (batches per rank per epoch)"
            )
        self.split, self.batch_size, self.shuffle, self.seed, self.epoch = (
            split,
            batch_size,
            shuffle,
            seed,
            epoch,
        )
        self.normalize, self.resampled, self.batches_per_epoch = (
            normalize,
            resampled,
            batches_per_epoch,
        )
        self.shuffle_buffer, self.skip_batches, self.drop_last = (
            shuffle_buffer,
            skip_batches,
            drop_last,
        )
        self.on_error, self.keys = on_error, keys
        # set by StreamLoader: workers then recycle batch memory
        self.release_flags: torch.Tensor | None = None
        self._pool: SharedBatchPool | None = None
        self._rank, self._world = rank, world_size
        if window is not None and not isinstance(window, WindowSpec):
            window = WindowSpec(*window)
        self._load_shard_sets(shards, split, window, normalize)
        self._count_windows(shards, split)
        self._resolve_weights(dataset_weights)

    def _load_shard_sets(
        self,
        shards: str | list[str],
        split: str,
        window: WindowSpec | None,
        normalize: bool,
    ) -> None:
        """Read every shard set's manifest: its normalizers, and one record per shard of ``split``
        (tagged with the set's layout and resolved window)."""
        self.manifests: list[Manifest] = []
        self.records: list[dict[str, Any]] = []
        self.normalizers: dict[str, Normalizer | None] = {}
        specs = []
        for location in (
            [shards] if isinstance(shards, (str,)) or not hasattr(shards, "__iter__") else shards
        ):
            manifest = Manifest.load(location)
            specs.append(manifest.resolve_window(window))
            self.manifests.append(manifest)
            for name in manifest.datasets:
                if name in self.normalizers:
                    raise DataError(f"{location}: dataset {name!r} appears in two shard sets")
                self.normalizers[name] = Normalizer(manifest, name) if normalize else None
            self.records += [
                {**rec, "layout": manifest.layout, "window": specs[-1]}
                for rec in shard_records(manifest, split, location, specs[-1])
            ]
        self.window = specs[0]
        if not self.records:
            raise DataError(f"{shards}: the {split!r} split has no shards")

    def _count_windows(self, shards: str | list[str], split: str) -> None:
        """``dataset_sizes``: windows per dataset over the split's shards; none at all is an
        error."""
        self.dataset_sizes: dict[str, int] = {}
        for rec in self.records:
            for name, n in rec["datasets"].items():
                self.dataset_sizes[name] = self.dataset_sizes.get(name, 0) + n
        if not any(self.dataset_sizes.values()):
            w = self.window
            raise DataError(
                f"{shards}: the {split!r} split has no {w.n_input}+{w.n_output} windows (stride {w.stride}): "
                f"its trajectories are shorter than {w.length} frames"
            )

    def _resolve_weights(self, dataset_weights: dict[str, float] | None) -> None:
        """``dataset_weights``: the caller's, else the manifests' (see ``manifest_weights``), one
        per dataset with windows; unknown names and all-zero weights are errors."""
        weights = dataset_weights or manifest_weights(self.manifests, self.dataset_sizes)
        unknown = set(weights) - set(self.dataset_sizes)
        if unknown:
            raise DataError(
                f"dataset_weights: unknown dataset {sorted(unknown)[0]!r} "
                f"(have: {', '.join(sorted(self.dataset_sizes))})"
            )
        self.dataset_weights = {k: float(weights.get(k, 0.0)) for k in sorted(self.dataset_sizes)}
        if sum(self.dataset_weights.values()) <= 0:
            raise DataError("dataset_weights: at least one weight must be positive")

    @property
    def manifest(self) -> Manifest:
        return self.manifests[0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # -------------------------------------------------------------------------------- helpers

    def _position(self) -> tuple[int, int, int, int]:
        rank, world = current_rank_world()
        rank = self._rank if self._rank is not None else rank
        world = self._world if self._world is not None else world
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, worker, n_workers

    def _rng(self, *extra: int) -> random.Random:
        # A string seed hashes deterministically (unlike tuples of ints under PYTHONHASHSEED).
        return random.Random(f"{self.seed}/{self.epoch}/" + "/".join(map(str, extra)))

    def _raw_samples(self, rec: dict[str, Any], skipped: list[int]) -> Iterator[dict[str, Any]]:
        """One shard's windows, decoded (arrays are views of the shard: no copy yet).  With
        ``on_error="skip"`` a damaged sample (or clip) is left out, logged and counted."""

        def skip(err: DataError) -> None:
            skipped[0] += 1
            log.warning("skipping corrupt sample (%d skipped so far): %s", skipped[0], err)

        on_error = skip if self.on_error == "skip" else None
        try:
            if rec["layout"] == CLIPS:
                decode = functools.partial(self._decode_checked, clip=True)
                yield from clip_shard_windows(rec, rec["window"], self.keys, decode, on_error)
                return
            for sample in iter_raw_samples(rec["url"]):
                try:
                    decoded = self._decode_checked(sample)
                except DataError as err:
                    if on_error is None:
                        raise
                    on_error(err)
                    continue
                yield decoded
        except DataError as err:
            if self.on_error == "raise":
                raise
            skipped[0] += 1
            log.warning("skipping rest of corrupt shard (%d skipped so far): %s", skipped[0], err)

    def _clip_arrays(self) -> tuple[str, ...]:
        """The clip members windows are cut from: ``frames`` for input/output, else the keys
        themselves."""
        return tuple(dict.fromkeys("frames" if k in ("input", "output") else k for k in self.keys))

    def _decode_checked(self, sample: dict[str, Any], clip: bool = False) -> dict[str, Any]:
        """The decoded sample, or DataError naming shard and sample if a member is corrupt or
        missing."""
        decoded = decode_sample(sample, copy=False)
        for key in ("meta", *(self._clip_arrays() if clip else self.keys)):
            if key not in decoded:
                raise DataError(
                    f"shard {decoded['__url__']}: sample {decoded['__key__']} has no {key} member "
                    "(truncated or incomplete shard)"
                )
        self._dataset_of(decoded)
        return decoded

    def _shuffled(
        self, samples: Iterator[dict[str, Any]], rng: random.Random
    ) -> Iterator[dict[str, Any]]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from samples
            return
        buf: list[dict[str, Any]] = []
        for sample in samples:
            buf.append(sample)
            if len(buf) >= self.shuffle_buffer:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def _collate(self, dataset: str, samples: list[dict[str, Any]], skipped: int) -> dict[str, Any]:
        batch: dict[str, Any] = {"dataset": dataset, "meta": [d["meta"] for d in samples]}
        for key in self.keys:
            missing = [d["__key__"] for d in samples if key not in d]
            if missing:
                raise DataError(
                    f"shard {samples[0]['__url__']}: sample {missing[0]} has no {key}.npy member"
                )
            first = samples[0][key]
            for d in samples:
                if d[key].shape != first.shape:
                    raise DataError(
                        f"shard {d['__url__']}: sample {d['__key__']} {key} has shape {d[key].shape}, "
                        f"another {dataset!r} sample {first.shape}"
                    )
        # One copy per window straight into the batch; in a worker the batch lives in (recycled)
        # shared memory already, so torch does not copy it again to hand it to the main process.
        parts = [
            ((len(samples), *samples[0][key].shape), samples[0][key].dtype) for key in self.keys
        ]
        info = get_worker_info()
        if info is not None and self.release_flags is not None and self._pool is None:
            self._pool = SharedBatchPool(self.release_flags, info.id)
        pooled = None
        if self._pool is not None:
            tensors, pooled = self._pool.take(parts)
        else:
            tensors = [
                batch_tensor(shape, dtype, shared=info is not None) for shape, dtype in parts
            ]
        normalizer = self.normalizers[dataset]
        for key, tensor in zip(self.keys, tensors):
            out = tensor.numpy()
            for i, d in enumerate(samples):
                out[i] = d[key]
            if normalizer is not None and out.dtype.kind == "f":
                mean, std = normalizer._cast(out)
                np.subtract(out, mean, out=out)
                np.divide(out, std, out=out)
            batch[key] = tensor
        # the arrays stay in the worker's buffer; StreamLoader rebuilds them over it
        if pooled is not None:
            for key in self.keys:
                del batch[key]
            batch["__pooled__"] = pooled
        batch["skipped_samples"] = skipped
        return batch

    @staticmethod
    def _dataset_of(sample: dict[str, Any]) -> str:
        url, key = sample.get("__url__", "?"), sample["__key__"]
        meta = sample.get("meta")
        if meta is None:  # a tar cut between members yields a sample without its meta.json
            raise DataError(
                f"shard {url}: sample {key} has no meta.json member (truncated or incomplete shard)"
            )
        if not isinstance(meta, dict) or not isinstance(meta.get("dataset"), str):
            raise DataError(f"shard {url}: member {key}.meta.json names no dataset")
        return meta["dataset"]

    # -------------------------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if get_worker_info() is None:
            yield from self._batches()
            return
        try:
            yield from self._batches()
        # bad data: hand the error itself to the main process (see WorkerFailure)
        except PhysfmError as err:
            yield WorkerFailure(err)

    def _batches(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, n_workers = self._position()
        if self.resampled:
            # The DataLoader asks its workers round-robin from worker 0, so after k consumed batches
            # worker w must make the batches worker (w + k) % n made in the uninterrupted run: it
            # takes that stream.
            worker = (worker + self.skip_batches) % n_workers
        # round-robin order of DataLoader workers
        skip = len(range(worker, self.skip_batches, n_workers))
        skipped = [0]
        # skips already reported in an earlier batch's skipped_new (or before a resume point)
        reported = 0
        gen = (
            self._resampled(rank, worker, n_workers, skipped)
            if self.resampled
            else self._sequential(rank, world, worker, n_workers, skipped)
        )
        for i, (dataset, raw) in enumerate(gen):
            if i < skip:
                reported = skipped[0]  # counted by the run before the resume
                continue
            batch = self._collate(dataset, raw, skipped[0])
            batch["skipped_new"], reported = skipped[0] - reported, skipped[0]
            yield batch

    def _sequential(self, rank, world, worker, n_workers, skipped) -> Iterator[tuple[str, list]]:
        records = list(self.records)
        if self.shuffle:
            self._rng("shards").shuffle(records)
        mine = records[rank::world][worker::n_workers]
        rng = self._rng(rank, worker)
        buckets: dict[str, list] = {}
        samples = (s for rec in mine for s in self._raw_samples(rec, skipped))
        for sample in self._shuffled(samples, rng):
            name = self._dataset_of(sample)
            bucket = buckets.setdefault(name, [])
            bucket.append(sample)
            if len(bucket) == self.batch_size:
                yield name, bucket
                buckets[name] = []
        if not self.drop_last:
            for name in sorted(buckets):
                if buckets[name]:
                    yield name, buckets[name]

    def _resampled(self, rank, worker, n_workers, skipped) -> Iterator[tuple[str, list]]:
        assert self.batches_per_epoch is not None
        n_batches = len(range(worker, self.batches_per_epoch, n_workers))
        rng = self._rng(rank, worker)
        by_dataset = {
            name: [r for r in self.records if r["datasets"].get(name)]
            for name in self.dataset_weights
        }
        names = [n for n, w in self.dataset_weights.items() if w > 0]
        weights = [self.dataset_weights[n] for n in names]

        def endless(name: str) -> Iterator[dict[str, Any]]:
            shard_rng = self._rng(rank, worker, name)

            def draw():
                empty: set[str] = set()  # shards drawn in a row that gave no sample of this dataset
                while True:
                    rec = shard_rng.choice(by_dataset[name])
                    got = 0
                    for s in self._raw_samples(rec, skipped):
                        if self._dataset_of(s) == name:
                            got += 1
                            yield s
                    if got:
                        empty.clear()
                        continue
                    if self.on_error == "raise":
                        raise DataError(f"shard {rec['url']}: no samples of dataset {name!r}")
                    empty.add(rec["url"])
                    if len(empty) == len(by_dataset[name]):  # skipping would spin forever
                        raise DataError(
                            f"dataset {name!r}: no readable samples in any of its "
                            f"{len(empty)} {self.split!r} shards (all skipped as corrupt)"
                        )

            return self._shuffled(draw(), shard_rng)

        streams: dict[str, Iterator] = {}
        for _ in range(n_batches):
            name = rng.choices(names, weights)[0]
            stream = streams.setdefault(name, endless(name))
            yield name, [next(stream) for _ in range(self.batch_size)]


class WorkerFailure:
    """A :class:`PhysfmError` raised in a DataLoader worker, sent to the main process in place of a
    batch. Torch would re-raise it there wrapped in the worker's traceback; :class:`StreamLoader`
    raises the original error instead, so the user reads one line."""

    def __init__(self, error: PhysfmError):
        self.error = error


class StreamLoader(DataLoader):
    """A ``DataLoader`` that re-raises a worker's :class:`WorkerFailure` as the original error."""

    def __iter__(self) -> Iterator[Any]:
        stream = self.dataset
        receiver = None
        if self.num_workers > 0 and isinstance(stream, WindowStream):
            # Fresh flags for this iteration's workers (they start inside super().__iter__() and
            # copy the stream).
            stream.release_flags = new_release_flags(self.num_workers)
            receiver = BatchReceiver(stream.release_flags)
        try:
            for batch in super().__iter__():
                if isinstance(batch, WorkerFailure):
                    raise batch.error
                if isinstance(batch, dict) and "__pooled__" in batch:
                    assert receiver is not None
                    for key, tensor in zip(stream.keys, receiver.tensors(batch.pop("__pooled__"))):
                        batch[key] = tensor
                yield batch
        finally:
            if receiver is not None:
                stream.release_flags = None


def _as_is(batch: Any) -> Any:
    """The DataLoader's collate for ready-made batches: torch's default would walk every batch's
    meta dicts (a third of the main process's time at 0 workers) to convert nothing."""
    return batch


def make_loader(
    shards: str | list[str], split: str, batch_size: int, *, num_workers: int = 0, **kwargs: Any
) -> DataLoader:
    """A ``DataLoader`` over :class:`WindowStream` (which batches itself).  See the module
    docstring."""
    stream = WindowStream(shards, split, batch_size, **kwargs)
    return StreamLoader(
        stream,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )

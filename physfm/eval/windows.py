"""Evaluation windows of horizon H: ``n_input`` context frames and the next ``H`` true frames.

Shards are cut with a default ``n_output`` (usually 1: the training target). When ``n_output >= H``
the shard windows are used as they are. A rollout of H frames needs H true frames after the context,
so when ``n_output < H`` the longer windows are cut again: from clip shards (any window can be cut
from them), or, for window shards (version 1), which hold fixed windows only, from the dataset files
the shards were made from (the manifest records each dataset's ``source_dir`` and its
``source_files`` per split), read with the same reader the sharder used. Every path gives the same
thing: batches of one dataset each, in physical units, plus each window's meta (dataset, source
file, trajectory, start index, parameters).

With ``max_windows`` each dataset keeps that many windows spread evenly over all of its windows (not
the first N, which would all come from one trajectory), so a capped evaluation still sees every
file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.clips import WindowSpec
from data_pipelines.errors import DataError
from data_pipelines.loader import make_loader
from data_pipelines.manifest import CLIPS, Manifest
from data_pipelines.shards import clip_shard_windows, decode_sample, shard_records
from data_pipelines.well_io import WellReader


@dataclass
class EvalBatch:
    dataset: str
    context: torch.Tensor  # [B, n_input, C, *space] float32, physical units
    truth: torch.Tensor  # [B, H, C, *space]
    meta: list[dict[str, Any]]


def evenly_spaced(n_total: int, n_keep: int | None) -> list[int]:
    """Indices of ``n_keep`` items spread evenly over ``range(n_total)`` (all of them when n_keep is
    None)."""
    if n_keep is None or n_keep >= n_total:
        return list(range(n_total))
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n_keep).round()})


def evaluation_windows(
    shards: str | Path,
    split: str,
    horizon: int,
    *,
    batch_size: int = 32,
    max_windows: int | None = None,
    stride: int | None = None,
    datasets: list[str] | None = None,
) -> Iterator[EvalBatch]:
    """Batches of (context, next ``horizon`` true frames) for every dataset of a shard set's split.

    ``max_windows`` caps windows per dataset; ``stride`` (windows longer than the shards') defaults
    to the manifest's; ``datasets`` restricts to these names."""
    if horizon < 1:
        raise DataError(f"horizon must be >= 1, got {horizon}")
    manifest = Manifest.load(shards)
    if manifest.is_tokens:
        raise DataError(
            f"{shards}: a token shard set; evaluation needs the field shards (physfm data shard)"
        )
    names = sorted(manifest.datasets)
    for name in datasets or []:
        if name not in names:
            raise DataError(f"{shards}: no dataset {name!r} (have: {', '.join(names)})")
    names = [n for n in names if datasets is None or n in datasets]
    if manifest.window.n_output >= horizon:
        yield from _shard_windows(shards, manifest, split, horizon, batch_size, max_windows, names)
        return
    spec = WindowSpec(manifest.window.n_input, horizon, stride or manifest.window.stride)
    for name in names:
        if manifest.layout == CLIPS:
            yield from _clip_windows(shards, manifest, name, split, spec, batch_size, max_windows)
        else:  # window shards hold their fixed windows only
            yield from _source_windows(shards, manifest, name, split, spec, batch_size, max_windows)


def _shard_windows(
    shards, manifest, split, horizon, batch_size, max_windows, names
) -> Iterator[EvalBatch]:
    """The windows the shards hold, in the loader's order; with ``max_windows``, the ones evenly
    spaced over each dataset's windows in that order (counted from the manifest), so a capped
    evaluation does not see only the first trajectory."""
    chosen: dict[str, set[int]] | None = None
    if max_windows is not None:
        totals = dict.fromkeys(names, 0)
        for rec in shard_records(manifest, split, shards, manifest.window):
            for name, count in rec["datasets"].items():
                if name in totals:
                    totals[name] += count
        chosen = {name: set(evenly_spaced(totals[name], max_windows)) for name in names}
    left = None if chosen is None else sum(len(c) for c in chosen.values())
    seen = dict.fromkeys(names, 0)
    for batch in make_loader(str(shards), split, batch_size, shuffle=False, normalize=False):
        name = batch["dataset"]
        if name not in seen:
            continue
        first, n = seen[name], len(batch["meta"])
        seen[name] += n
        keep = (
            list(range(n)) if chosen is None else [i for i in range(n) if first + i in chosen[name]]
        )
        if not keep:
            continue
        rows = torch.tensor(keep)
        yield EvalBatch(
            name,
            batch["input"][rows].float(),
            batch["output"][rows, :horizon].float(),
            [batch["meta"][i] for i in keep],
        )
        if left is not None:
            left -= len(keep)
            if left <= 0:  # every chosen window was served: the rest of the split is not read
                return


def _too_short(shards, name: str, split: str, spec: WindowSpec) -> DataError:
    return DataError(
        f"{shards}: dataset {name!r} has no {split} trajectory long enough for {spec.n_input} context "
        f"+ {spec.n_output} frames; lower the horizon"
    )


def _batched(
    name: str, windows: Iterator[tuple[np.ndarray, dict[str, Any]]], n_input: int, batch_size: int
):
    """(window frames, meta) pairs → EvalBatches of ``batch_size`` (the last one may be smaller)."""
    frames, metas = [], []
    for window, meta in windows:
        frames.append(window)
        metas.append(meta)
        if len(frames) == batch_size:
            stacked = torch.from_numpy(np.stack(frames))
            yield EvalBatch(name, stacked[:, :n_input], stacked[:, n_input:], metas)
            frames, metas = [], []
    if frames:
        stacked = torch.from_numpy(np.stack(frames))
        yield EvalBatch(name, stacked[:, :n_input], stacked[:, n_input:], metas)


def _clip_windows(
    shards, manifest: Manifest, name, split, spec: WindowSpec, batch_size, max_windows
):
    """Dataset ``name``'s ``spec`` windows cut from clip shards; only shards holding a chosen one
    are read."""
    records = shard_records(manifest, split, shards, spec)
    counts = [rec["datasets"].get(name, 0) for rec in records]
    if not sum(counts):
        raise _too_short(shards, name, split, spec)
    chosen = set(evenly_spaced(sum(counts), max_windows))

    def windows() -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        first = 0  # the dataset's index of the first window a record owns
        for rec, count in zip(records, counts):
            index, first = first, first + count
            if not any(i in chosen for i in range(index, first)):
                continue
            for window in clip_shard_windows(
                rec, spec, ("frames",), lambda s: decode_sample(s, copy=False)
            ):
                if window["meta"]["dataset"] != name:
                    continue
                if index in chosen:
                    yield np.array(window["frames"], dtype=np.float32), window["meta"]
                index += 1

    yield from _batched(name, windows(), spec.n_input, batch_size)


def _source_files(shards, manifest: Manifest, name: str, split: str) -> list[Path]:
    entry = manifest.datasets[name]
    source_dir, files = entry.source_dir, entry.source_files.get(split)
    if not source_dir or files is None:
        raise DataError(
            f"{shards}: windows of this shard set hold {manifest.window.n_output} output frame(s) and its "
            f"manifest does not say where dataset {name!r}'s {split} files are (source_dir/source_files); "
            "re-shard with --n-output >= the horizon"
        )
    paths = [_locate_source_dir(source_dir, shards) / "data" / split / f for f in files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{missing[0]}: source file of dataset {name!r} ({split}) named by {shards}/manifest.json "
            "is missing; longer evaluation windows are cut from the source files"
        )
    return paths


def _locate_source_dir(source_dir: str, shards: str | Path) -> Path:
    """The manifest's ``source_dir``; a relative one that is not there from the working directory
    (it was recorded from wherever ``physfm data shard`` ran, e.g. "runs/quickstart/data/x") is
    tried from each of the shard folder's ancestors."""
    path = Path(source_dir)
    if path.is_absolute() or path.exists():
        return path
    for ancestor in Path(shards).resolve().parents:
        if (ancestor / path).exists():
            return ancestor / path
    return path


def _source_windows(
    shards, manifest: Manifest, name, split, spec: WindowSpec, batch_size, max_windows
):
    """Dataset ``name``'s ``spec`` windows cut from its source files (window shards cannot serve
    them)."""
    entry = manifest.datasets[name]
    # Enumerate every window first (metadata only), then read the chosen ones trajectory by
    # trajectory.
    index: list[tuple[Path, int, int]] = []
    for path in _source_files(shards, manifest, name, split):
        with WellReader(path) as reader:
            if reader.dataset_name != name or reader.channel_names != entry.channel_names:
                raise DataError(
                    f"{path}: holds dataset {reader.dataset_name!r} with channels {reader.channel_names}, "
                    f"the manifest says {name!r} with {entry.channel_names}"
                )
            for traj in range(reader.n_trajectories):
                index += [(path, traj, s) for s in spec.starts(reader.n_steps)]
    if not index:
        raise _too_short(shards, name, split, spec)
    chosen = [index[i] for i in evenly_spaced(len(index), max_windows)]
    yield from _batched(
        name, _read_source_windows(name, chosen, spec.length), spec.n_input, batch_size
    )


def _read_source_windows(name: str, chosen: list[tuple[Path, int, int]], length: int):
    """(frames, meta) of each chosen (file, trajectory, start), one read per trajectory."""
    reader, frames, current = None, None, None
    try:
        for path, traj, start in chosen:
            if (path, traj) != current:
                if reader is None or reader.path != path:
                    if reader is not None:
                        reader.close()
                    reader = WellReader(path)
                frames, current = reader.frames(traj, 0, reader.n_steps), (path, traj)
            window = frames[start : start + length]
            if not np.isfinite(window).all():
                raise DataError(
                    f"{path}: trajectory {traj}: non-finite values in frames {start}:{start + length}"
                )
            meta = {
                "dataset": name,
                "source_file": os.path.basename(path),
                "trajectory": traj,
                "start": start,
                "params": dict(reader.simulation_parameters),
            }
            yield window, meta
    finally:
        if reader is not None:
            reader.close()

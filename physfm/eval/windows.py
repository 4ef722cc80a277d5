"""Evaluation windows of horizon H: ``n_input`` context frames and the next ``H`` true frames.

Shards are cut with a fixed ``n_output`` (usually 1: the training target). A rollout of H frames needs
H true frames after the context, so when ``n_output < H`` the windows are cut again, longer, from the
dataset files the shards were made from (the manifest records each dataset's ``source_dir`` and its
``source_files`` per split) and read with the same reader the sharder used. When ``n_output >= H`` the
shard windows are used as they are. Both paths give the same thing: batches of one dataset each, in
physical units, plus each window's meta (dataset, source file, trajectory, start index, parameters).

With ``max_windows`` each dataset keeps that many windows spread evenly over all of its windows (not
the first N, which would all come from one trajectory), so a capped evaluation still sees every file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.errors import DataError
from data_pipelines.loader import make_loader
from data_pipelines.shards import read_manifest
from data_pipelines.well_io import WellReader


@dataclass
class EvalBatch:
    dataset: str
    context: torch.Tensor  # [B, n_input, C, *space] float32, physical units
    truth: torch.Tensor  # [B, H, C, *space]
    meta: list[dict[str, Any]]


def evenly_spaced(n_total: int, n_keep: int | None) -> list[int]:
    """Indices of ``n_keep`` items spread evenly over ``range(n_total)`` (all of them when n_keep is None)."""
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

    ``max_windows`` caps windows per dataset; ``stride`` (source-file path only) defaults to the
    manifest's; ``datasets`` restricts to these names."""
    if horizon < 1:
        raise DataError(f"horizon must be >= 1, got {horizon}")
    manifest = read_manifest(shards)
    if manifest.get("tokenizer_fingerprint"):
        raise DataError(f"{shards}: a token shard set; evaluation needs the field shards (physfm data shard)")
    names = sorted(manifest["datasets"])
    for name in datasets or []:
        if name not in names:
            raise DataError(f"{shards}: no dataset {name!r} (have: {', '.join(names)})")
    names = [n for n in names if datasets is None or n in datasets]
    if manifest["n_output"] >= horizon:
        yield from _shard_windows(shards, manifest, split, horizon, batch_size, max_windows, names)
        return
    for name in names:
        yield from _source_windows(
            shards, manifest, name, split, horizon, batch_size, max_windows, stride or int(manifest.get("stride", 1))
        )


def _shard_windows(shards, manifest, split, horizon, batch_size, max_windows, names) -> Iterator[EvalBatch]:
    seen = {name: 0 for name in names}
    for batch in make_loader(str(shards), split, batch_size, shuffle=False, normalize=False):
        name = batch["dataset"]
        if name not in seen:
            continue
        keep = len(batch["meta"]) if max_windows is None else min(len(batch["meta"]), max_windows - seen[name])
        if keep <= 0:
            continue
        seen[name] += keep
        yield EvalBatch(
            name, batch["input"][:keep].float(), batch["output"][:keep, :horizon].float(), list(batch["meta"][:keep])
        )


def _source_files(shards, manifest: dict[str, Any], name: str, split: str) -> list[Path]:
    entry = manifest["datasets"][name]
    source_dir, files = entry.get("source_dir"), entry.get("source_files", {}).get(split)
    if not source_dir or files is None:
        raise DataError(
            f"{shards}: windows of this shard set hold {manifest['n_output']} output frame(s) and its manifest "
            f"does not say where dataset {name!r}'s {split} files are (source_dir/source_files); "
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
    """The manifest's ``source_dir``; a relative one that is not there from the working directory (it was
    recorded from wherever ``physfm data shard`` ran, e.g. "runs/quickstart/data/x") is tried from each of the
    shard folder's ancestors."""
    path = Path(source_dir)
    if path.is_absolute() or path.exists():
        return path
    for ancestor in Path(shards).resolve().parents:
        if (ancestor / path).exists():
            return ancestor / path
    return path


def _source_windows(shards, manifest, name, split, horizon, batch_size, max_windows, stride) -> Iterator[EvalBatch]:
    n_input = int(manifest["n_input"])
    length = n_input + horizon
    entry = manifest["datasets"][name]
    # Enumerate every window first (metadata only), then read the chosen ones trajectory by trajectory.
    index: list[tuple[Path, int, int]] = []
    for path in _source_files(shards, manifest, name, split):
        with WellReader(path) as reader:
            if reader.dataset_name != name or reader.channel_names != list(entry["channel_names"]):
                raise DataError(
                    f"{path}: holds dataset {reader.dataset_name!r} with channels {reader.channel_names}, "
                    f"the manifest says {name!r} with {entry['channel_names']}"
                )
            for traj in range(reader.n_trajectories):
                index += [(path, traj, s) for s in range(0, reader.n_steps - length + 1, stride)]
    if not index:
        raise DataError(
            f"{shards}: dataset {name!r} has no {split} trajectory long enough for {n_input} context "
            f"+ {horizon} frames; lower the horizon"
        )
    chosen = [index[i] for i in evenly_spaced(len(index), max_windows)]
    contexts, truths, metas = [], [], []
    reader, frames, current = None, None, None
    try:
        for path, traj, start in chosen:
            if (path, traj) != current:
                if reader is None or reader.path != path:
                    if reader is not None:
                        reader.close()
                    reader = WellReader(path)
                frames, current = reader.frames(traj, 0, reader.n_steps), (path, traj)  # one read per trajectory
            window = frames[start : start + length]
            if not np.isfinite(window).all():
                raise DataError(f"{path}: trajectory {traj}: non-finite values in frames {start}:{start + length}")
            contexts.append(window[:n_input])
            truths.append(window[n_input:])
            metas.append(
                {
                    "dataset": name,
                    "source_file": os.path.basename(path),
                    "trajectory": traj,
                    "start": start,
                    "params": dict(reader.simulation_parameters),
                }
            )
            if len(contexts) == batch_size:
                yield EvalBatch(name, torch.from_numpy(np.stack(contexts)), torch.from_numpy(np.stack(truths)), metas)
                contexts, truths, metas = [], [], []
    finally:
        if reader is not None:
            reader.close()
    if contexts:
        yield EvalBatch(name, torch.from_numpy(np.stack(contexts)), torch.from_numpy(np.stack(truths)), metas)

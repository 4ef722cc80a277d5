"""The held-out system's data for bench/transfer.py: a training split cut to a few trajectories,
the spare ones moved into valid and test so selection and scores see several trajectories per
parameter set, and the native-dimensionality shards the baselines read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from data_pipelines.errors import PhysfmError
from data_pipelines.sharding import WindowSpec, shard_datasets
from data_pipelines.well_format import WellData
from data_pipelines.well_io import list_split_files, read_well, write_well


class HeldOutDataError(PhysfmError, ValueError):
    """The held-out dataset cannot be split as the bench needs; the message names the file."""


def training_choice(trajectories_per_file: list[int], n: int) -> list[list[int]]:
    """Which trajectories of each training file to keep: ``n`` in all, the first unused one of each
    file in turn (so they span parameter sets), → per file a sorted list of indices."""
    if sum(trajectories_per_file) < n:
        raise HeldOutDataError(
            f"the training split has {sum(trajectories_per_file)} trajectories; need {n}"
        )
    keep: list[list[int]] = [[] for _ in trajectories_per_file]
    taken = 0
    while taken < n:
        for i, total in enumerate(trajectories_per_file):
            if taken < n and len(keep[i]) < total:
                keep[i].append(len(keep[i]))
                taken += 1
    return keep


def subset_trajectories(data: WellData, keep: list[int]) -> WellData:
    """``data`` with only the trajectories ``keep`` (sample-varying fields and scalars sliced)."""
    fields = [
        dataclasses.replace(f, data=f.data[keep]) if f.sample_varying else f for f in data.fields
    ]
    scalars = [
        dataclasses.replace(s, data=s.data[keep]) if s.sample_varying else s for s in data.scalars
    ]
    return dataclasses.replace(data, fields=fields, scalars=scalars, n_trajectories=len(keep))


# How the held-out data is split (part of its cache key): see training_subset.
HELD_OUT_SPLITS = (
    "train: n trajectories; valid, test: their own + the spare training ones, half each"
)


def training_subset(dataset: Path, out: Path, n: int) -> Path:
    """A copy of a The Well dataset whose training split keeps ``n`` trajectories (see
    `training_choice`); each training file's other trajectories are appended to the same parameter
    set's valid (first half) and test (second half) files, since no method trains on them; no
    stats.yaml, so sharding computes the statistics from those ``n`` trajectories alone."""
    files = list_split_files(dataset, "train")
    data = [read_well(f) for f in files]
    try:
        keep = training_choice([d.n_trajectories for d in data], n)
    except HeldOutDataError as err:
        raise HeldOutDataError(f"{dataset}: {err}") from None
    (out / "data" / "train").mkdir(parents=True)
    spare: dict[str, dict[str, WellData]] = {"valid": {}, "test": {}}
    for f, d, k in zip(files, data, keep):
        if k:
            write_well(out / "data" / "train" / f.name, subset_trajectories(d, k))
        rest = [i for i in range(d.n_trajectories) if i not in k]
        half = len(rest) // 2
        for split, part in (("valid", rest[:half]), ("test", rest[half:])):
            if part:
                spare[split][f.name] = subset_trajectories(d, part)
    for split in ("valid", "test"):
        (out / "data" / split).mkdir(parents=True)
        own = {f.name: f for f in list_split_files(dataset, split)}
        for name in sorted({*own, *spare[split]}):
            joined = [read_well(own[name])] if name in own else []
            joined += [spare[split][name]] if name in spare[split] else []
            where = dataset / "data" / split / name
            write_well(out / "data" / split / name, join_trajectories(joined, where))
    return out


def join_trajectories(parts: list[WellData], where: Path) -> WellData:
    """One file's worth of trajectories from ``parts`` of the same parameter set: sample-varying
    fields and scalars concatenated; everything else must agree (``where`` names it if not)."""
    first = parts[0]
    for other in parts[1:]:
        same = (
            other.n_steps == first.n_steps
            and other.spatial_shape == first.spatial_shape
            and [f.name for f in other.fields] == [f.name for f in first.fields]
            and [s.name for s in other.scalars] == [s.name for s in first.scalars]
        )
        if not same:
            raise HeldOutDataError(
                f"{where}: its splits' files differ in steps, grid, fields or scalars; cannot "
                "move spare training trajectories into valid/test"
            )

    def joined(per_part: list[list]) -> list:
        """Per field (or scalar), its parts' data along the trajectory axis."""
        out = []
        for items in zip(*per_part):
            data = np.concatenate([i.data for i in items]) if items[0].sample_varying else None
            out.append(items[0] if data is None else dataclasses.replace(items[0], data=data))
        return out

    return dataclasses.replace(
        first,
        fields=joined([p.fields for p in parts]),
        scalars=joined([p.scalars for p in parts]),
        n_trajectories=sum(p.n_trajectories for p in parts),
    )


def native_shards(dataset: Path, out: Path, n_input: int) -> Path:
    """``n_input`` + 1 frame windows of the dataset in its own dimensionality (the FNO's, U-Net's
    and persistence's data)."""
    shard_datasets([dataset], out, WindowSpec(n_input, 1, 1), workers=1, overwrite=True)
    return out
